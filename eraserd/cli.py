"""``eraserd``: thin click commands, one library call each.

Every command takes ``--config`` and ``--json``. Errors become one line on stderr (or a JSON
object on stdout) and a non-zero exit code from the table shared with ``eraserctl``
(``eraserd.errors.EXIT_CODES``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .cli_evaluate import evaluate
from .cli_planning import plan, simulate, thresholds
from .cliutil import Group, command, emit, eraser_for, raise_error, require_model
from .errors import ERROR, EraserdError
from .idfile import read_ids
from .locking import StateLock
from .logs import LEVELS as LOG_LEVELS


@click.group(cls=Group)
@click.version_option(__version__, prog_name="eraserd")
def main() -> None:
    """eraserd: exact machine unlearning for vision models (LMEraser)."""


@main.command()
@click.option("--if-missing", is_flag=True, help="Do nothing if a model already exists.")
@click.option("--force", is_flag=True, help="Rebuild from scratch even if a model exists.")
@command
def build(cfg, as_json: bool, if_missing: bool, force: bool) -> None:
    """Ingest the private data (once) and build a model from scratch."""
    with StateLock(cfg.state_dir, "eraserd build"), eraser_for(cfg, need_model=False) as er:
        if er.has_model() and not force:
            if if_missing:
                cur = er.registry.current()
                emit(
                    as_json,
                    {"version": cur[0], "built": False},
                    f"model exists (version {cur[0]}); nothing to build",
                )
                return
            raise_error(
                "a model already exists; pass --force to rebuild from scratch, "
                "or --if-missing to skip"
            )
        m = er.build()
    acc = "n/a" if m.accuracy is None else f"{m.accuracy:.2%}"
    emit(
        as_json,
        {
            "version": m.version,
            "built": True,
            "clusters": len(m.clusters),
            "samples": dict(m.samples),
            "accuracy": m.accuracy,
            "seconds": m.change.seconds,
        },
        f"built version {m.version}: {len(m.clusters)} clusters, "
        f"{m.samples['train']} training samples, held-out accuracy {acc} "
        f"({m.change.seconds:.1f}s)",
    )


@main.command()
@click.option("--sample-id", "sample_ids", multiple=True, help="A sample id (repeatable).")
@click.option("--subject-id", "subject_ids", multiple=True, help="A subject id (repeatable).")
@click.option(
    "--from-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File of ids, one per line: ID, sample:ID or subject:ID.",
)
@command
def forget(cfg, as_json: bool, sample_ids, subject_ids, from_file) -> None:
    """Exactly unlearn samples and erase them from disk."""
    more_samples, more_subjects = read_ids(from_file)
    samples, subjects = list(sample_ids) + more_samples, list(subject_ids) + more_subjects
    if not samples and not subjects:
        raise_error("name at least one --sample-id, --subject-id or --from-file")
    require_model(cfg)
    with StateLock(cfg.state_dir, "eraserd forget"), eraser_for(cfg) as er:
        r = er.forget(samples, subjects)
    emit(
        as_json,
        {
            "version": r.version,
            "forgotten": r.forgotten,
            "affected": r.affected,
            "retrained": r.retrained,
            "reclustered": r.reclustered,
        },
        f"forgot {r.forgotten} sample(s): version {r.version}, "
        f"{len(r.affected)} affected cluster(s), {len(r.retrained)} retrained"
        + (", reclustered" if r.reclustered else ""),
    )


@main.command()
@command
def verify(cfg, as_json: bool) -> None:
    """Rebuild from scratch on the live data and compare with CURRENT (exit 0 iff equal)."""
    from . import checks

    with eraser_for(cfg) as er:
        report = checks.verify(er)
    lines = [
        f"version {report['version']}: "
        + ("identical to a from-scratch rebuild" if report["identical"] else "DIFFERS")
    ]
    lines += [f"  {p}" for p in report["problems"]]
    lines += [
        f"  cluster {k}: {v}"
        for k, v in report["clusters"].items()
        if v != "identical" or not report["identical"]
    ]
    emit(as_json, report, "\n".join(lines))
    if not report["identical"]:
        sys.exit(ERROR)


@main.group()
def audit() -> None:
    """Deletion certificates and their hash-chained audit log."""


@audit.command("verify")
@command
def audit_verify(cfg, as_json: bool) -> None:
    """Check the audit log's chain and that no certified-deleted data is live (exit 0 iff OK)."""
    from . import checks

    with eraser_for(cfg) as er:
        report = checks.audit_verify(er)
    head = (
        f"audit log: {report['entries']} certificate(s), "
        f"{report['certified_samples']} sample(s) and {report['certified_subjects']} "
        f"subject(s) certified deleted; version {report['version']}: "
        + ("OK" if report["ok"] else "FAILED")
    )
    emit(as_json, report, "\n".join([head] + [f"  {p}" for p in report["problems"]]))
    if not report["ok"]:
        sys.exit(ERROR)


@main.command()
@command
def info(cfg, as_json: bool) -> None:
    """Version, backbone, sample and cluster counts, cluster sizes, accuracy."""
    with eraser_for(cfg) as er:
        i = er.info()
    sizes = sorted(i["cluster_sizes"].values(), reverse=True)
    acc = "n/a" if i["accuracy"] is None else f"{i['accuracy']:.2%}"
    text = "\n".join(
        [
            f"version:   {i['version']} (parent {i['parent']}, {i['created_at']})",
            f"backbone:  {i['backbone']['name']} @ {i['backbone']['image_size']}px, "
            f"weights sha256 {i['backbone']['weights_sha256'][:16]}",
            f"samples:   {i['samples']['train']} train, {i['samples']['test']} held out",
            f"clusters:  {i['clusters']} (sizes {sizes[:12]}{' ...' if len(sizes) > 12 else ''})",
            f"accuracy:  {acc} on the held-out split, routed by {_routing_words(i['routing'])}",
            f"deletion cost: {_cost_line(i['cost'])}",
            f"last change: {i['change']['kind']}, {len(i['change']['retrained'])} cluster(s) "
            f"trained, {i['change']['reused']} reused",
        ]
    )
    emit(as_json, i, text)


def _routing_words(r: dict) -> str:
    if r.get("method") == "neighbors":
        return f"a vote of the {r['neighbors']} nearest training points"
    return "the nearest prototype"


def _cost_line(c: dict) -> str:
    se = f" ± {c['recluster_share_se']:.1%}" if c["recluster_share_se"] else ""
    return (
        f"a random single deletion retrains {c['expected_retrain_share']:.1%} of the training "
        f"data on average, {c['expected_compute_share']:.1%} of the work of retraining one "
        f"prompt on all of it (largest cluster {c['largest_share']:.1%}; "
        f"{c['p_recluster']:.1%} of deletions recluster, retraining "
        f"{c['recluster_share']:.1%}{se} each)"
    )


@main.command()
@click.option(
    "--cluster", default=None, help="Only samples of this cluster key; '-' for held-out ones."
)
@command
def samples(cfg, as_json: bool, cluster) -> None:
    """List samples: id, subject, split, cluster, and whether in the clustering sample."""
    from .eraser import HELD_OUT

    with eraser_for(cfg) as er:
        rows = er.samples(cluster)
    text = "\n".join(
        f"{r['sample_id']}\t{r['subject_id'] or '-'}\t{r['split']}\t"
        f"{r['cluster'] or HELD_OUT}\t{'sample' if r['in_clustering_sample'] else '-'}"
        for r in rows
    )
    emit(as_json, rows, text)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@command
def predict(cfg, as_json: bool, images) -> None:
    """Classify image files with the current version."""
    from .data.images import ImageDecodeError

    data = []
    for path in images:  # before the backbone loads: a missing file fails at once
        try:
            data.append((path, path.read_bytes()))
        except OSError as exc:
            raise EraserdError(f"{path}: cannot read: {exc.strerror}") from None
    with eraser_for(cfg) as er:
        pred = er.predictor()
        out = []
        for path, raw in data:
            try:
                p = pred.predict_bytes(raw)
            except ImageDecodeError as exc:
                raise EraserdError(f"{path}: not a readable image ({exc})") from None
            out.append(
                {
                    "image": str(path),
                    "label": p.label,
                    "cluster": p.cluster,
                    "version": p.version,
                    "probability": round(p.probability, 6),
                }
            )
    emit(
        as_json,
        out,
        "\n".join(
            f"{o['image']}\t{o['label']}\tcluster {o['cluster']}\t"
            f"version {o['version']}\tp={o['probability']:.3f}"
            for o in out
        ),
    )


@main.command()
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default=None,
    help="Least severity logged (default: daemon.log_level, info); debug adds an access log.",
)
@command
def run(cfg, as_json: bool, log_level: str | None) -> None:
    """Serve: build a model if none exists, then run the deletion daemon and control API."""
    from .serving import serve

    def banner(version: int, addresses: list[str]) -> None:
        click.echo(
            f"eraserd serving version {version} on {', '.join(addresses)} "
            f"(token in {cfg.token_path})",
            err=True,
        )

    serve(cfg, (log_level or cfg.daemon.log_level).lower(), as_json, banner)


for _command in (thresholds, plan, simulate, evaluate):  # cli_planning.py, cli_evaluate.py
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
