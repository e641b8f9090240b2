"""``eraserd evaluate``: LMEraser against its baselines on the configured data and backbone
(``evaluation.py``). Registered on ``eraserd`` by ``cli.py``."""

from __future__ import annotations

from pathlib import Path

import click

from .cliutil import command, emit, raise_error


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
    "--ablations",
    is_flag=True,
    help="Also LMEraser's accuracy as 10-50% of training subjects are forgotten, and at "
    "1-32 prompts.",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), help="Override training.epochs for every build."
)
@click.option(
    "--min-steps", type=click.IntRange(min=0), help="Override training.min_steps for every build."
)
@click.option(
    "--plots",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the figures (PNG, needs matplotlib) into this directory.",
)
@click.option(
    "--scratch",
    type=click.Path(exists=True, file_okay=False, writable=True, path_type=Path),
    help="Where the scratch states go (default: the system's temp dir); deleted at the end.",
)
@command
def evaluate(
    cfg,
    as_json: bool,
    seeds: int,
    forgets: int,
    quick: bool,
    ablations: bool,
    epochs: int | None,
    min_steps: int | None,
    plots,
    scratch,
) -> None:
    """LMEraser against one prompt, random groups, a shared head and SISA shards."""
    from .evaluation import PROMPTS, RATIOS, quick_config, with_training
    from .evaluation import evaluate as run

    if plots is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise_error("--plots needs matplotlib: pip install matplotlib")
        try:  # before the builds, so a bad directory fails now, not after them
            plots.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise_error(f"--plots: cannot create {plots}: {exc.strerror}")
    if quick:
        cfg, seeds, forgets = quick_config(cfg), 1, min(forgets, 1)
    cfg = with_training(cfg, epochs, min_steps)
    report = run(
        cfg,
        [cfg.seed + i for i in range(seeds)],
        forgets,
        scratch,
        ratios=RATIOS if ablations else (),
        prompts=PROMPTS if ablations else (),
        say=lambda line: click.echo(line, err=True),  # progress: stderr, --json too
    )
    if plots is not None:
        from .evalplots import plot_report

        report["plots"] = [str(p) for p in plot_report(report, plots)]
    text = report["table"] + "".join(f"\nwrote {p}" for p in report.get("plots", ()))
    emit(as_json, {k: v for k, v in report.items() if k != "table"}, text)
