"""``eraserd thresholds``, ``eraserd plan`` and ``eraserd simulate``: the commands that help an
operator choose the clustering and the batch window. Registered on ``eraserd`` by ``cli.py``."""

from __future__ import annotations

from pathlib import Path

import click

from .cliutil import command, emit, eraser_for, raise_error
from .errors import EraserdError


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


@click.command()
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
    with eraser_for(cfg, need_model=False) as er:
        table = er.threshold_table(points, caps, evaluations)
    lines = [
        f"{'threshold':>10} {'cap':>6} {'clusters':>8} {'largest':>8} {'retrain/del':>11} "
        f"{'work/del':>8} {'P(recl)':>8} {'recl':>6}"
    ]
    for t in table:
        if t["method"] == "random":
            cut = f"random {t['n_clusters']}"
        elif t["threshold"] is not None:
            cut = f"{t['threshold']:.4g}"
        else:
            cut = f"n={t['n_clusters']}"
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
    emit(as_json, table, "\n".join(lines))


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


@click.command()
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
    with eraser_for(cfg) as er:
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
    emit(as_json, payload, window_plan.format_plan(p, inputs))


@click.command()
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

    with eraser_for(cfg) as er:
        inputs = plan_inputs(er.registry.load())
    d = cfg.daemon
    rate = rate if rate is not None else 1.0 / d.batch_window_s
    try:
        s = replay(inputs.sizes, d, rate, windows, seed, inputs.batch_seconds)
    except ValueError as exc:
        raise EraserdError(str(exc)) from None
    emit(
        as_json,
        {"version": inputs.version, "seed": seed, **s.to_dict()},
        f"version {inputs.version}: {len(inputs.sizes)} clusters, {sum(inputs.sizes)} "
        f"training samples\n" + format_simulation(s),
    )
