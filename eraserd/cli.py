"""``eraserd``: thin click commands, one library call each.

Every command takes ``--config`` and ``--json``. Errors become one line on stderr (or a JSON
object on stdout) and a non-zero exit code from the table shared with ``eraserctl``
(``eraserd.errors.EXIT_CODES``).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from . import __version__, progress
from .cliutil import Group
from .config import load_config
from .errors import ERROR, EraserdError, RegistryError, error_json
from .idfile import read_ids
from .locking import StateLock
from .logs import LEVELS as LOG_LEVELS


def _emit(as_json: bool, payload, text: str) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True) if as_json else text)


def command(fn):
    """Shared options and error handling for every subcommand."""

    @click.option(
        "--config",
        "-c",
        "config_path",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="YAML config file.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @functools.wraps(fn)
    def wrapper(config_path: Path, as_json: bool, **kwargs):
        progress.set_enabled(not as_json)
        try:
            cfg = load_config(config_path)
            return fn(cfg, as_json, **kwargs)
        except EraserdError as exc:
            if as_json:
                click.echo(json.dumps(error_json(exc)))
            else:
                click.echo(f"eraserd: error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


def raise_error(message: str) -> None:
    raise EraserdError(message)


def _require_model(cfg) -> None:
    """Commands that read a model fail before they create anything in a new ``state_dir``."""
    from .registry import Registry

    if Registry(cfg.state_dir).current() is None:
        raise RegistryError(f"no model yet in {cfg.state_dir}: run `eraserd build` first")


def _eraser(cfg, need_model: bool = True):
    from .eraser import Eraser

    if need_model:
        _require_model(cfg)
    return Eraser(cfg)


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
    with StateLock(cfg.state_dir, "eraserd build"), _eraser(cfg, need_model=False) as er:
        if er.has_model() and not force:
            if if_missing:
                cur = er.registry.current()
                _emit(
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
    _emit(
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
    _require_model(cfg)
    with StateLock(cfg.state_dir, "eraserd forget"), _eraser(cfg) as er:
        r = er.forget(samples, subjects)
    _emit(
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
    with _eraser(cfg) as er:
        report = er.verify()
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
    _emit(as_json, report, "\n".join(lines))
    if not report["identical"]:
        sys.exit(ERROR)


@main.group()
def audit() -> None:
    """Deletion certificates and their hash-chained audit log."""


@audit.command("verify")
@command
def audit_verify(cfg, as_json: bool) -> None:
    """Check the audit log's chain and that no certified-deleted data is live (exit 0 iff OK)."""
    with _eraser(cfg) as er:
        report = er.audit_verify()
    head = (
        f"audit log: {report['entries']} certificate(s), "
        f"{report['certified_samples']} sample(s) and {report['certified_subjects']} "
        f"subject(s) certified deleted; version {report['version']}: "
        + ("OK" if report["ok"] else "FAILED")
    )
    _emit(as_json, report, "\n".join([head] + [f"  {p}" for p in report["problems"]]))
    if not report["ok"]:
        sys.exit(ERROR)


@main.command()
@command
def info(cfg, as_json: bool) -> None:
    """Version, backbone, sample and cluster counts, cluster sizes, accuracy."""
    with _eraser(cfg) as er:
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
    _emit(as_json, i, text)


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

    with _eraser(cfg) as er:
        rows = er.samples(cluster)
    text = "\n".join(
        f"{r['sample_id']}\t{r['subject_id'] or '-'}\t{r['split']}\t"
        f"{r['cluster'] or HELD_OUT}\t{'sample' if r['in_clustering_sample'] else '-'}"
        for r in rows
    )
    _emit(as_json, rows, text)


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
    with _eraser(cfg) as er:
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
    _emit(
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


class _Caps(click.ParamType):
    """A comma-separated list of cluster caps in (0, 1], or ``none``."""

    name = "caps"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        out: list[float | None] = []
        for part in str(value).split(","):
            part = part.strip().lower()
            if part in ("none", "null", "-"):
                out.append(None)
                continue
            try:
                cap = float(part)
            except ValueError:
                self.fail(f"{part!r} is not a share in (0, 1] or 'none'", param, ctx)
            if not 0 < cap <= 1:
                self.fail(f"{part!r} is not a share in (0, 1] or 'none'", param, ctx)
            out.append(cap)
        return tuple(out)


def _share(value) -> str:
    return "none" if value is None else f"{value:g}"


@main.command()
@click.option(
    "--points", default=8, show_default=True, type=click.IntRange(min=1), help="Thresholds."
)
@click.option(
    "--caps",
    default="none,0.2,0.1,0.05,0.02",
    show_default=True,
    type=_Caps(),
    help="Cluster caps (max_cluster_share) to try with each threshold.",
)
@click.option(
    "--evaluations",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Sample deletions replayed per setting to estimate the recluster cost.",
)
@command
def thresholds(cfg, as_json: bool, points: int, caps, evaluations: int) -> None:
    """Candidate thresholds and caps: clusters, largest share, cost per deletion."""
    with _eraser(cfg, need_model=False) as er:
        table = er.threshold_table(points, caps, evaluations)
    lines = [
        f"{'threshold':>10} {'cap':>6} {'clusters':>8} {'largest':>8} {'retrain/del':>11} "
        f"{'work/del':>8} {'P(recl)':>8} {'recl':>6}"
    ]
    for t in table:
        cut = f"{t['threshold']:.4g}" if t["threshold"] is not None else f"n={t['n_clusters']}"
        lines.append(
            f"{cut:>10} {_share(t['max_cluster_share']):>6} {t['clusters']:>8} "
            f"{t['largest_share']:>7.1%}{'*' if t['over_cap'] else ' '} "
            f"{t['expected_retrain_share']:>11.1%} "
            f"{t['expected_compute_share']:>8.1%} "
            f"{t['p_recluster']:>8.1%} {t['recluster_share']:>6.0%}"
            + ("  <- configured" if t["configured"] else "")
        )
    lines.append(
        "retrain/del: expected share of the training data one random deletion retrains; "
        "work/del: its retrain work over one prompt's on all data; recl: share a recluster "
        "retrains (after deleting a clustering-sample point, P(recl) of deletions)"
    )
    if any(t["over_cap"] for t in table):
        lines.append(
            "*: over the cap. Clusters are split on the clustering sample and one with a "
            "single sample point is never split, so raise clustering.sample_size for this cap"
        )
    _emit(as_json, table, "\n".join(lines))


class _Parsed(click.ParamType):
    """A value parsed by ``eraserd.window_plan``; a bad one is a usage error (exit 2)."""

    def __init__(self, name: str, parser: str):
        self.name, self._parser = name, parser

    def convert(self, value, param, ctx):
        from . import units

        if isinstance(value, float):
            return value
        try:
            return getattr(units, self._parser)(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


RATE = _Parsed("rate", "parse_rate")
DURATION = _Parsed("duration", "parse_duration")


def _executor_devices(cfg) -> int:
    """Devices the configured executor retunes on at once (Ray: 1; pass --devices)."""
    if cfg.executor.backend == "local":
        from .executor.local import resolve_devices

        return len(resolve_devices(cfg.executor.devices))
    return 1


@main.command()
@click.option(
    "--rate", required=True, type=RATE, help="Sample deletions: per second, or 200/d, 5/h, 0.1/s."
)
@click.option(
    "--deadline", required=True, type=DURATION, help="Submit to published: seconds, or 72h, 3d."
)
@click.option(
    "--devices",
    type=click.IntRange(min=1),
    default=None,
    help="Devices retuning at once (default: the executor's).",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also draw E[K] and device-seconds/day against T into this PNG.",
)
@command
def plan(cfg, as_json: bool, rate: float, deadline: float, devices, plot) -> None:
    """Choose the batch window T for a deletion rate and a deadline."""
    from . import window_plan

    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise_error("--plot needs matplotlib: pip install matplotlib")
    with _eraser(cfg) as er:
        inputs = window_plan.plan_inputs(er.registry.load())
    devices = devices or _executor_devices(cfg)
    try:
        p = window_plan.plan(
            inputs.sizes,
            inputs.times.seconds,
            rate,
            deadline,
            devices,
            inputs.sample_counts,
            current_window_s=cfg.daemon.batch_window_s,
            margin_s=cfg.daemon.deadline_margin_s,
            recluster_share=inputs.recluster_share,
            single_prompt_s=inputs.single_prompt_s,
        )
    except ValueError as exc:
        raise EraserdError(str(exc)) from None
    if plot is not None:
        window_plan.plot_plan(p, plot)
    payload = {
        "version": inputs.version,
        "cluster_sizes": list(inputs.sizes),
        "cluster_seconds": list(inputs.times.seconds),
        "retune_basis": inputs.times.basis,
        "recluster_share": inputs.recluster_share,
        "single_prompt_s": inputs.single_prompt_s,
        **p.to_dict(),
    }
    _emit(as_json, payload, window_plan.format_plan(p, inputs))


@main.command()
@click.option(
    "--rate", type=RATE, default=None, help="Sample deletions (default: one per batch window)."
)
@click.option(
    "--windows", type=click.IntRange(min=1), default=2000, show_default=True, help="Windows to run."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the arrivals.")
@command
def simulate(cfg, as_json: bool, rate, windows: int, seed: int) -> None:
    """Replay Poisson deletions against the daemon's batch policy; compare with the model."""
    from .simulate import format_simulation
    from .simulate import simulate as replay
    from .window_plan import plan_inputs

    with _eraser(cfg) as er:
        inputs = plan_inputs(er.registry.load())
    d = cfg.daemon
    rate = rate if rate is not None else 1.0 / d.batch_window_s
    try:
        s = replay(inputs.sizes, d, rate, windows, seed, inputs.batch_seconds)
    except ValueError as exc:
        raise EraserdError(str(exc)) from None
    _emit(
        as_json,
        {"version": inputs.version, "seed": seed, **s.to_dict()},
        f"version {inputs.version}: {len(inputs.sizes)} clusters, {sum(inputs.sizes)} "
        f"training samples\n" + format_simulation(s),
    )


if __name__ == "__main__":  # pragma: no cover
    main()
