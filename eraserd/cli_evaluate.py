"""``eraserd evaluate``: LMEraser against its baselines on the configured data and backbone
(``evaluation.py``). Registered on ``eraserd`` by ``cli.py``."""

from __future__ import annotations

from pathlib import Path

import click

from .cliutil import command, emit


@click.command()
@click.option(
    "--seeds",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Builds per method, with seeds seed, seed+1, ...: accuracy is their mean ± sd.",
)
@click.option(
    "--forgets",
    default=5,
    show_default=True,
    type=click.IntRange(min=0),
    help="Single deletions timed per method, on its first seed's build.",
)
@click.option(
    "--quick",
    is_flag=True,
    help="A smoke run: one seed, one timed deletion, training.epochs 2 and min_steps 30.",
)
@click.option(
    "--scratch",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the scratch states go (default: the system's temp dir); deleted at the end.",
)
@command
def evaluate(cfg, as_json: bool, seeds: int, forgets: int, quick: bool, scratch) -> None:
    """LMEraser against one prompt, random groups and SISA shards, each built anew."""
    from .evaluation import evaluate as run
    from .evaluation import quick_config

    if quick:
        cfg, seeds, forgets = quick_config(cfg), 1, min(forgets, 1)
    report = run(
        cfg,
        [cfg.seed + i for i in range(seeds)],
        forgets,
        scratch,
        say=lambda line: None if as_json else click.echo(line, err=True),
    )
    emit(as_json, {k: v for k, v in report.items() if k != "table"}, report["table"])
