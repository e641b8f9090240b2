"""Choose the batch window T: device cost and latency of candidate windows (``eraserd plan``).

The model, on top of the paper's Appendix 2 (``poisson.py``):

* Deletions arrive as a Poisson process of ``rate`` samples per second, uniform over the
  ``N`` training samples, so cluster ``i`` is hit in a window with
  ``P_i = 1 - exp(-(m_i / N) * rate * T)``, independently of the others.
* Retuning cluster ``i`` costs ``c_i`` device-seconds (measured, or estimated from its size).
  Device-seconds per day are ``(86400 / T) * sum_i P_i * c_i``.
* A deletion of a clustering-sample point reclusters (probability ``P_recl`` per window, at
  rate ``rate * S / N``), which retrains ``R`` of the data (``cost.py``'s
  ``recluster_share``, measured by replaying such deletions). It adds
  ``P_recl * R * sum_i c_i`` device-seconds, and ``P_recl * R`` of a full retrain's makespan
  to the batch, to each window: an upper bound, as a recluster may also retrain clusters
  that were hit anyway.
* A request waits for the end of its window (``T / 2`` on average, ``T`` at worst), then for
  its batch. Expected latency is ``T / 2 + E[batch | K >= 1]``. Worst latency is
  ``T + full retrain``: a deletion from the clustering sample reclusters, which may change
  every cluster, and the full retrain is every cluster on ``devices`` devices, largest first.
* A window is feasible when the worst latency is within the deadline less the daemon's
  ``deadline_margin_s``, and the batch runner keeps up (it is busy less than the whole time
  on average). Keeping the margin also keeps the daemon's deadline rule from flushing a
  window early.

Cost falls as T grows, because ``(1 - exp(-a T)) / T`` decreases, so the recommendation is
the longest feasible window. Everything here is pure except ``plot_plan``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import poisson
from .config import cluster_epochs
from .manifest import Manifest
from .units import DAY_S, format_duration

SHORTEST_WINDOW_S = 60.0
DEFAULT_SAMPLE_EPOCHS_PER_S = 100.0
"""Assumed retune throughput when the current version measured no retune job."""

# ---- retune times -----------------------------------------------------------------------


@dataclass(frozen=True)
class RetuneTimes:
    seconds: tuple[float, ...]
    """Device-seconds to retune each cluster, in the order of the sizes."""
    seconds_per_sample_epoch: float
    measured: int
    """Clusters whose time was measured; the others are estimated from their size."""
    basis: str


def retune_times(
    sizes: Sequence[int],
    epochs: int | Sequence[int],
    measured: Sequence[float | None],
    sample_epochs_per_s: float = DEFAULT_SAMPLE_EPOCHS_PER_S,
) -> RetuneTimes:
    """Measured seconds where a cluster has them, else ``size * epochs`` at the throughput
    of the measured clusters (sum of seconds over sum of sample-epochs), else at the given
    fallback throughput. ``epochs`` is one count, or each cluster's own (``min_steps``)."""
    if len(measured) != len(sizes):
        raise ValueError("need one measured time (or None) per cluster")
    per_cluster = [epochs] * len(sizes) if isinstance(epochs, int) else list(epochs)
    if len(per_cluster) != len(sizes) or min(per_cluster, default=1) < 1:
        raise ValueError("epochs must be at least 1, one count or one per cluster")
    if not (sample_epochs_per_s > 0 and math.isfinite(sample_epochs_per_s)):
        raise ValueError("the fallback throughput must be positive")
    steps = [m * e for m, e in zip(sizes, per_cluster)]
    known = [(w, s) for w, s in zip(steps, measured) if s is not None]
    if any(s < 0 for _, s in known):
        raise ValueError("measured retune times must not be negative")
    work = sum(w for w, _ in known)
    if known and work > 0 and sum(s for _, s in known) > 0:
        per = sum(s for _, s in known) / work
        basis = (
            f"measured for {len(known)} of {len(sizes)} clusters ({1 / per:.4g} sample-epochs/s)"
        )
    else:
        per = 1.0 / sample_epochs_per_s
        basis = f"assumed {sample_epochs_per_s:.4g} sample-epochs/s (no retune measured)"
    secs = tuple(float(s) if s is not None else w * per for w, s in zip(steps, measured))
    return RetuneTimes(secs, per, len(known), basis)


def cluster_epochs_of(manifest: Manifest) -> list[int]:
    """Each cluster's epochs under the version's training config (``min_steps`` included)."""
    t = manifest.training
    return [
        cluster_epochs(c.size, int(t["epochs"]), int(t["batch_size"]), t.get("min_steps", 0))
        for c in manifest.clusters
    ]


def image_steps(manifest: Manifest) -> dict[str, float]:
    """Image-steps (size x epochs) of each cluster of a version, by key."""
    return {
        c.key: float(c.size * e) for c, e in zip(manifest.clusters, cluster_epochs_of(manifest))
    }


@dataclass(frozen=True)
class PlanInputs:
    """What the planner needs from a registry version."""

    version: int
    sizes: tuple[int, ...]
    sample_counts: tuple[int, ...]
    """Members of each cluster that are in the clustering sample (deleting one reclusters)."""
    times: RetuneTimes
    batch_seconds: float
    """The version's own change time: what the daemon starts from as its predicted batch time."""
    recluster_share: float = 0.0
    """Share of the data a recluster retrains (0 when the version does not say)."""
    single_prompt_s: float | None = None
    """``T_s``: one prompt trained on every training sample, at its own epochs and the
    measured throughput. ``None``: the sum of the clusters' times (equal epochs)."""


def plan_inputs(manifest: Manifest) -> PlanInputs:
    """Cluster sizes and retune times of a version manifest (``change.jobs`` holds the
    seconds of every cluster that version trained)."""
    clusters, jobs = manifest.clusters, manifest.change.jobs
    sizes = tuple(c.size for c in clusters)
    measured = [jobs[c.key].seconds if c.key in jobs else None for c in clusters]
    times = retune_times(sizes, cluster_epochs_of(manifest), measured)
    t, n = manifest.training, sum(sizes)
    single = n * cluster_epochs(n, int(t["epochs"]), int(t["batch_size"]), t.get("min_steps", 0))
    return PlanInputs(
        manifest.version,
        sizes,
        tuple(c.sample_count for c in clusters),
        times,
        manifest.change.seconds or 60.0,
        float((manifest.cost or {}).get("recluster_share", 0.0)),
        single * times.seconds_per_sample_epoch,
    )


# ---- the trade-off table ----------------------------------------------------------------


def full_retrain_seconds(cluster_seconds: Sequence[float], devices: int | None) -> float:
    """Makespan of retuning every cluster, largest first on the least-loaded device (LPT,
    as the executors schedule); ``devices=None`` is unlimited parallelism."""
    times = sorted((float(s) for s in cluster_seconds), reverse=True)
    if not times:
        return 0.0
    if devices is None or devices >= len(times):
        return times[0]
    loads = [0.0] * devices
    for t in times:
        heapq.heappush(loads, heapq.heappop(loads) + t)
    return max(loads)


def expected_largest(hit: np.ndarray, cluster_seconds: np.ndarray) -> float:
    """``E[max c_i over the hit clusters]`` (0 when none is hit), exact for independent hits."""
    order = np.argsort(-cluster_seconds, kind="stable")
    p, c = hit[order], cluster_seconds[order]
    none_larger = np.concatenate([[1.0], np.cumprod(1.0 - p)[:-1]])
    return float((c * p * none_larger).sum())


@dataclass(frozen=True)
class PlanRow:
    window_s: float
    expected_affected: float
    variance_affected: float
    p_any: float
    p_recluster: float
    batches_per_day: float
    retrains_per_day: float
    device_s_per_day: float
    single_prompt_device_s_per_day: float
    """The same deletions against one prompt over all data (the paper's ``T_s``, Eq. 22)."""
    batch_s: float
    """Expected batch duration per window, windows with no work counted as 0."""
    expected_batch_s: float
    """Expected duration of a batch that has work (``K >= 1``)."""
    busy: float
    """Share of the time the batch runner is retuning, on average."""
    expected_latency_s: float
    worst_latency_s: float
    feasible: bool


@dataclass(frozen=True)
class Plan:
    rate: float
    deadline_s: float
    devices: int | None
    samples: int
    clusters: int
    full_retrain_s: float
    rows: tuple[PlanRow, ...]
    recommended: PlanRow | None
    current_window_s: float | None = None
    margin_s: float = 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["recommended_window_s"] = (
            None if self.recommended is None else self.recommended.window_s
        )
        return out


def window_grid(deadline_s: float, points: int = 13, shortest_s: float = SHORTEST_WINDOW_S):
    """Log-spaced windows from ``shortest_s`` to the deadline, rounded to whole seconds."""
    if not (deadline_s > shortest_s and math.isfinite(deadline_s)):
        raise ValueError(
            f"the deadline ({deadline_s:g}s) must be longer than the shortest window "
            f"({shortest_s:g}s)"
        )
    if points < 2:
        raise ValueError("need at least 2 grid points")
    grid = np.geomspace(shortest_s, deadline_s, points)
    return sorted({float(round(t)) for t in grid[:-1]} | {float(deadline_s)})


def plan_row(
    sizes: Sequence[int],
    cluster_seconds: Sequence[float],
    rate: float,
    window_s: float,
    budget_s: float,
    devices: int | None,
    full_retrain_s: float,
    sample_counts: Sequence[int] | None = None,
    recluster_share: float = 0.0,
    single_prompt_s: float | None = None,
) -> PlanRow:
    """One window's cost and latency under the model in the module docstring; feasible if
    the worst latency is within ``budget_s`` (the deadline less the margin). A single
    prompt retrains in ``single_prompt_s`` (default: the sum of the clusters' times)."""
    c = np.asarray(cluster_seconds, dtype=np.float64)
    single = float(c.sum()) if single_prompt_s is None else float(single_prompt_s)
    hit = poisson.cluster_hit_probabilities(sizes, rate, window_s)
    e_k = float(hit.sum())
    any_hit = poisson.p_any(rate, window_s)
    per_day = DAY_S / window_s
    work = float((hit * c).sum())
    if devices is None:
        batch = expected_largest(hit, c)
    else:
        mean_c = work / e_k if e_k > 0 else 0.0
        batch = max(
            poisson.expected_batch_seconds(mean_c, sizes, rate, window_s, devices),
            expected_largest(hit, c),  # no batch is faster than its largest cluster
        )
    n = float(np.sum(sizes))
    recl = 0.0
    if sample_counts is not None and n > 0:
        recl = poisson.p_any(rate * float(np.sum(sample_counts)) / n, window_s)
    work += recl * recluster_share * float(c.sum())
    batch += recl * recluster_share * full_retrain_s
    nonempty = 1.0 - float(np.prod(1.0 - hit))
    batch_if_any = batch / nonempty if nonempty > 0 else 0.0
    busy = batch / window_s
    worst = window_s + full_retrain_s
    return PlanRow(
        window_s=float(window_s),
        expected_affected=e_k,
        variance_affected=float((hit * (1.0 - hit)).sum()),
        p_any=any_hit,
        p_recluster=recl,
        batches_per_day=per_day * nonempty,
        retrains_per_day=per_day * e_k,
        device_s_per_day=per_day * work,
        single_prompt_device_s_per_day=per_day * any_hit * single,
        batch_s=batch,
        expected_batch_s=batch_if_any,
        busy=busy,
        expected_latency_s=window_s / 2 + batch_if_any,
        worst_latency_s=worst,
        feasible=bool(worst <= budget_s and busy < 1.0),
    )


def plan(
    sizes: Sequence[int],
    cluster_seconds: Sequence[float],
    rate: float,
    deadline_s: float,
    devices: int | None = 1,
    sample_counts: Sequence[int] | None = None,
    windows: Sequence[float] | None = None,
    current_window_s: float | None = None,
    margin_s: float = 0.0,
    recluster_share: float = 0.0,
    single_prompt_s: float | None = None,
) -> Plan:
    """The trade-off table over candidate windows and the cheapest feasible one.

    ``windows`` defaults to ``window_grid(deadline_s)`` plus the longest feasible window
    (the deadline minus a full retrain, rounded down to a minute), which is the optimum.
    ``current_window_s`` (the configured T) is always added, to compare against. A window
    is feasible if its worst latency is at most ``deadline_s - margin_s``.
    """
    if len(sizes) == 0 or len(cluster_seconds) != len(sizes):
        raise ValueError("need at least one cluster, with one retune time per cluster")
    if min(sizes) < 0 or sum(sizes) <= 0:
        raise ValueError("cluster sizes must be non-negative with a positive total")
    if any(not (s >= 0 and math.isfinite(s)) for s in cluster_seconds):
        raise ValueError("retune times must be finite and non-negative")
    if sample_counts is not None and len(sample_counts) != len(sizes):
        raise ValueError("need one clustering-sample count per cluster")
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of deletions per second, got {rate}")
    if not (deadline_s > 0 and math.isfinite(deadline_s)):
        raise ValueError(f"deadline must be a positive number of seconds, got {deadline_s}")
    if devices is not None and devices < 1:
        raise ValueError("devices must be at least 1")
    if not (0 <= margin_s < deadline_s):
        raise ValueError("the margin must be non-negative and shorter than the deadline")
    full = full_retrain_seconds(cluster_seconds, devices)
    budget = deadline_s - margin_s
    if windows is None:
        windows = window_grid(deadline_s)
        edge = budget - full
        edge = math.floor(edge / 60) * 60 if edge >= 120 else math.floor(edge)
        if edge > 0:
            windows = sorted(set(windows) | {float(edge)})
    if current_window_s is not None:
        windows = sorted(set(windows) | {float(current_window_s)})
    if not windows or any(not (t > 0 and math.isfinite(t)) for t in windows):
        raise ValueError("candidate windows must be positive numbers of seconds")
    rows = tuple(
        plan_row(
            sizes,
            cluster_seconds,
            rate,
            t,
            budget,
            devices,
            full,
            sample_counts,
            recluster_share,
            single_prompt_s,
        )
        for t in sorted(windows)
    )
    feasible = [r for r in rows if r.feasible]
    best = min(feasible, key=lambda r: (r.device_s_per_day, r.window_s)) if feasible else None
    return Plan(
        rate,
        deadline_s,
        devices,
        int(sum(sizes)),
        len(sizes),
        full,
        rows,
        best,
        current_window_s,
        margin_s,
    )


def efficiency_gain(row: PlanRow, inputs: PlanInputs) -> float:
    """Device-seconds a single prompt over all data would spend on the same deletions,
    over LMEraser's (Eq. 24, size-aware and with reclusters). At a zero rate it is the
    limit ``T_s / (sum (m_i / N) c_i + (S / N) * R * sum c)``."""
    if row.device_s_per_day > 0:
        return row.single_prompt_device_s_per_day / row.device_s_per_day
    m = np.asarray(inputs.sizes, dtype=np.float64)
    c = np.asarray(inputs.times.seconds, dtype=np.float64)
    n, total = float(m.sum()), float(c.sum())
    if n <= 0 or total <= 0:
        return float("nan")
    per_deletion = float((m / n * c).sum())
    per_deletion += sum(inputs.sample_counts) / n * inputs.recluster_share * total
    single = total if inputs.single_prompt_s is None else inputs.single_prompt_s
    return single / per_deletion


# ---- output -----------------------------------------------------------------------------


def format_plan(p: Plan, inputs: PlanInputs | None = None) -> str:
    lines = []
    if inputs is not None:
        lines.append(
            f"version {inputs.version}: {p.clusters} clusters, {p.samples} training samples; "
            f"retune times {inputs.times.basis}"
        )
    lines.append(
        f"rate {p.rate:.4g}/s ({p.rate * DAY_S:.4g}/day), deadline "
        f"{format_duration(p.deadline_s)}"
        + (f" less a {format_duration(p.margin_s)} margin" if p.margin_s else "")
        + f", {p.devices or 'unlimited'} device(s): "
        f"a full retrain takes {format_duration(p.full_retrain_s)}"
    )
    head = (
        f"{'window':>11} {'E[K]':>8} {'Var[K]':>8} {'P(any)':>7} {'P(recl)':>7} "
        f"{'device-s/day':>12} {'latency':>11} {'worst':>11}  ok"
    )
    lines.append(head)
    for r in p.rows:
        mark = " <- recommended" if r is p.recommended else ""
        if r.window_s == p.current_window_s:
            mark += " (current)"
        lines.append(
            f"{format_duration(r.window_s):>11} {r.expected_affected:8.3g} "
            f"{r.variance_affected:8.3g} {r.p_any:7.3f} {r.p_recluster:7.3f} "
            f"{r.device_s_per_day:12.4g} {format_duration(r.expected_latency_s):>11} "
            f"{format_duration(r.worst_latency_s):>11}  {'yes' if r.feasible else 'no'}{mark}"
        )
    best = p.recommended
    if best is None:
        lines.append(
            f"no window meets the deadline of {format_duration(p.deadline_s)}: a full retrain "
            f"takes {format_duration(p.full_retrain_s)} on "
            f"{p.devices or 'unlimited'} device(s); add devices or relax the deadline"
        )
        return "\n".join(lines)
    gain = (
        best.single_prompt_device_s_per_day / best.device_s_per_day
        if best.device_s_per_day > 0
        else float("nan")
    )
    lines.append(
        f"recommended: batch_window_s: {best.window_s:g}  ({format_duration(best.window_s)}; "
        f"E[K] {best.expected_affected:.3g} clusters per window, "
        f"{best.device_s_per_day:.4g} device-s/day, expected latency "
        f"{format_duration(best.expected_latency_s)}, worst "
        f"{format_duration(best.worst_latency_s)})"
    )
    lines.append(
        f"a single prompt over all data would need {best.single_prompt_device_s_per_day:.4g} "
        f"device-s/day at that window ({gain:.3g}x)"
    )
    if best.p_recluster > 0.05:
        lines.append(
            f"note: {best.p_recluster:.0%} of windows delete a clustering-sample member and "
            + (
                f"recluster, retraining {inputs.recluster_share:.0%} of the data each time "
                "(counted in the cost above)"
                if inputs is not None and inputs.recluster_share > 0
                else "recluster; the table's cost counts only clusters hit by deletions"
            )
        )
    return "\n".join(lines)


def plot_plan(p: Plan, path: Path) -> None:
    """E[K] and device-seconds per day against T, as a PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r.window_s / 3600 for r in p.rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(7, 6))
    ax1.plot(t, [r.expected_affected for r in p.rows], "o-")
    ax1.set_ylabel("E[K] clusters per window")
    ax2.plot(t, [r.device_s_per_day for r in p.rows], "o-", color="tab:orange")
    ax2.set_ylabel("device-seconds per day")
    ax2.set_xlabel("batch window T (hours)")
    bad = [r for r in p.rows if not r.feasible]
    ax1.plot(
        [r.window_s / 3600 for r in bad],
        [r.expected_affected for r in bad],
        "rx",
        label="infeasible",
    )
    ax2.plot([r.window_s / 3600 for r in bad], [r.device_s_per_day for r in bad], "rx")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
        if p.recommended is not None:
            ax.axvline(p.recommended.window_s / 3600, color="green", ls="--", label="recommended")
    ax2.set_yscale("log")
    ax1.legend(loc="best")
    ax1.set_title(
        f"rate {p.rate * DAY_S:.4g}/day, deadline {format_duration(p.deadline_s)}, "
        f"{p.devices or 'unlimited'} device(s)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
