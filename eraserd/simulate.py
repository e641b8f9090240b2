"""Replay Poisson deletions against the daemon's real flush policy on a virtual clock.

``eraserd simulate`` checks the batch model (``poisson.py``) against what the daemon would
actually do. Deletions of single samples arrive as a Poisson process of ``rate`` per second,
uniform over the training samples (so a cluster is chosen in proportion to its size); the
cluster sizes stay fixed, as in the model. The clock is virtual and every step the daemon
takes is replayed with the same inputs:

* ``Daemon.submit`` queues a request and asks ``FlushPolicy.on_submit``, which flushes at
  once when ``max_batch_samples`` are pending;
* ``Daemon.tick`` runs every ``FlushPolicy.tick_s`` (``min(1 s, T / 4)``) and asks
  ``FlushPolicy.on_tick`` with the queue's ``Pending`` summary and the predicted batch time;
  the policy starts a new window once ``T`` has passed (a window therefore lasts ``T``
  rounded up to a tick). This replay drives the same ``FlushPolicy`` object.

Ticks where nothing can change are skipped, which is what makes long windows cheap. Each
flush forms a batch of everything pending; ``K`` is the number of distinct clusters it hits.
Batches are formed instantly: the retune time never holds back the next flush.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from . import poisson
from .config import DaemonConfig
from .flush import FlushPolicy
from .queue import Pending

_CHUNK = 4096


@dataclass(frozen=True)
class Simulation:
    rate: float
    window_s: float
    max_batch_samples: int
    default_deadline_s: float
    deadline_margin_s: float
    predicted_batch_s: float
    """The policy replayed: the daemon's ``batch_window_s`` and flush thresholds."""
    effective_window_s: float
    """Mean length of a simulated window (``T`` rounded up to the daemon's tick)."""
    windows: int
    deletions: int
    batches: int
    reasons: dict[str, int]
    k_mean: float
    """Clusters retrained per window: the ``K`` of every batch flushed in it, summed."""
    k_var: float
    busy_share: float
    """Share of windows that flushed at least one batch (every batch hits a cluster)."""
    batch_k_mean: float
    batch_k_var: float
    interval_mean_s: float
    """Time between consecutive batches (``nan`` with fewer than two)."""
    interval_var_s2: float
    wait_mean_s: float
    """Submit to batch, averaged over deletions (``nan`` with none)."""
    wait_max_s: float
    predicted: dict[str, float]
    """The Poisson model at the effective window: what window-only flushing should show."""

    @property
    def k_standard_error(self) -> float:
        return math.sqrt(self.predicted["variance_affected"] / self.windows)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["k_standard_error"] = self.k_standard_error
        return _finite_or_none(out)


def _finite_or_none(v):
    """JSON has no NaN: undefined statistics (no batches yet) become null."""
    if isinstance(v, dict):
        return {k: _finite_or_none(x) for k, x in v.items()}
    return None if isinstance(v, float) and not math.isfinite(v) else v


def predicted(sizes: Sequence[int], rate: float, window_s: float) -> dict[str, float]:
    """Window-only flushing: every window with a deletion is one batch."""
    p = poisson.p_any(rate, window_s)
    e_k = poisson.expected_affected(sizes, rate, window_s)
    return {
        "expected_affected": e_k,
        "variance_affected": poisson.variance_affected(sizes, rate, window_s),
        "p_any": p,
        "batch_k_mean": e_k / p if p > 0 else float("nan"),
        "interval_mean_s": window_s / p if p > 0 else float("nan"),
        "interval_var_s2": window_s**2 * (1 - p) / p**2 if p > 0 else float("nan"),
        "wait_mean_s": window_s / 2,
    }


def poisson_arrivals(
    rng: np.random.Generator, rate: float, sizes: Sequence[int]
) -> Iterator[tuple[float, int]]:
    """Endless ``(time, cluster)`` pairs: Poisson times, each deleting a uniform sample."""
    if rate == 0:
        return
    bounds = np.cumsum(np.asarray(sizes, dtype=np.int64))
    last = 0.0
    while True:
        times = last + np.cumsum(rng.exponential(1.0 / rate, _CHUNK))
        clusters = np.searchsorted(bounds, rng.integers(0, int(bounds[-1]), _CHUNK), "right")
        yield from zip(times.tolist(), clusters.tolist())
        last = float(times[-1])


@dataclass
class Trace:
    """What the daemon would have done: every batch and every window, in order."""

    batch_at: list[float] = field(default_factory=list)
    batch_k: list[int] = field(default_factory=list)
    batch_reason: list[str] = field(default_factory=list)
    window_k: list[int] = field(default_factory=list)
    """Clusters retrained per window: the ``K`` of every batch flushed in it, summed."""
    window_len: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    """Submit to batch, per deletion."""
    still_queued: int = 0


def _window_tick(k_min: int, tick: float, start: float, window: float) -> int:
    """The first tick index ``>= k_min`` at which ``Daemon.tick`` sees the window over."""
    j = max(k_min, math.floor((start + window) / tick) - 1)
    while j * tick - start < window:
        j += 1
    return j


def _deadline_tick(k_min: int, tick: float, due: float) -> int:
    """The first tick index ``>= k_min`` at which ``flush_reason``'s deadline rule fires."""
    j = max(k_min, math.floor(due / tick) - 1)
    while due > j * tick:
        j += 1
    return j


def replay(
    arrivals: Iterable[tuple[float, int]],
    policy: DaemonConfig,
    windows: int,
    predicted_s: float = 60.0,
) -> Trace:
    """Feed time-ordered ``(time, cluster)`` single-sample deletions to the daemon's flush
    policy on a virtual clock that starts at 0, for ``windows`` windows."""
    if windows < 1:
        raise ValueError("replay at least one window")
    flusher = FlushPolicy(policy, 0.0)  # what the daemon drives, on a virtual clock
    window, tick = policy.batch_window_s, flusher.tick_s
    margin = policy.deadline_margin_s
    upcoming = iter(arrivals)
    nxt_arrival = next(upcoming, None)
    queued: list[tuple[float, int]] = []  # (submitted at, cluster)
    k, this_window, out = 0, 0, Trace()

    def flush(reason: str, now: float) -> None:
        nonlocal this_window
        kk = len({c for _, c in queued})
        out.batch_at.append(now)
        out.batch_k.append(kk)
        out.batch_reason.append(reason)
        out.waits.extend(now - t for t, _ in queued)
        queued.clear()
        this_window += kk

    def pending() -> Pending:
        first = queued[0][0] if queued else None
        deadline = None if first is None else first + policy.default_deadline_s
        return Pending(len(queued), len(queued), first, deadline)

    while len(out.window_k) < windows:
        nxt = _window_tick(k + 1, tick, flusher.window_start, window)
        if queued:
            due = queued[0][0] + policy.default_deadline_s - predicted_s - margin
            nxt = min(nxt, _deadline_tick(k + 1, tick, due))
        if nxt_arrival is not None and nxt_arrival[0] < nxt * tick:  # Daemon.submit
            queued.append(nxt_arrival)
            nxt_arrival = next(upcoming, None)
            reason = flusher.on_submit(pending())
            if reason is not None:
                flush(reason, queued[-1][0])
            continue
        k = nxt
        now = k * tick  # Daemon.tick
        step = flusher.on_tick(pending(), now, predicted_s)
        if step.reason is not None:
            flush(step.reason, now)
        if step.ended_window_s is not None:
            out.window_k.append(this_window)
            out.window_len.append(step.ended_window_s)
            this_window = 0
    out.still_queued = len(queued)
    return out


def simulate(
    sizes: Sequence[int],
    policy: DaemonConfig,
    rate: float,
    windows: int,
    seed: int = 0,
    predicted_s: float = 60.0,
    max_deletions: int = 5_000_000,
) -> Simulation:
    """Replay ``windows`` windows of Poisson deletions and compare with the model.

    ``predicted_s`` is the batch time the deadline rule assumes (the daemon starts from the
    current version's change time)."""
    m = np.asarray(sizes, dtype=np.int64)
    if m.ndim != 1 or m.size == 0 or m.min() < 0 or m.sum() == 0:
        raise ValueError("cluster sizes must be non-negative counts with a positive total")
    if not (rate >= 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a finite non-negative number, got {rate}")
    if windows < 1:
        raise ValueError("simulate at least one window")
    window = policy.batch_window_s
    if rate * window * windows > max_deletions:
        raise ValueError(
            f"{windows} windows at {rate * window:.4g} deletions each is more than "
            f"{max_deletions} deletions to replay; use fewer windows or a lower rate"
        )
    arrivals = poisson_arrivals(np.random.default_rng(seed), rate, m.tolist())
    t = replay(arrivals, policy, windows, predicted_s)
    effective = float(np.mean(t.window_len))
    intervals = np.diff(t.batch_at)
    k = np.asarray(t.window_k)
    nan = float("nan")
    return Simulation(
        rate=rate,
        window_s=window,
        max_batch_samples=policy.max_batch_samples,
        default_deadline_s=policy.default_deadline_s,
        deadline_margin_s=policy.deadline_margin_s,
        predicted_batch_s=predicted_s,
        effective_window_s=effective,
        windows=windows,
        deletions=len(t.waits) + t.still_queued,
        batches=len(t.batch_k),
        reasons=dict(sorted(Counter(t.batch_reason).items())),
        k_mean=float(k.mean()),
        k_var=float(k.var(ddof=1)) if windows > 1 else 0.0,
        busy_share=float((k > 0).mean()),
        batch_k_mean=float(np.mean(t.batch_k)) if t.batch_k else nan,
        batch_k_var=float(np.var(t.batch_k, ddof=1)) if len(t.batch_k) > 1 else nan,
        interval_mean_s=float(intervals.mean()) if intervals.size else nan,
        interval_var_s2=float(intervals.var(ddof=1)) if intervals.size > 1 else nan,
        wait_mean_s=float(np.mean(t.waits)) if t.waits else nan,
        wait_max_s=float(np.max(t.waits)) if t.waits else nan,
        predicted=predicted(m.tolist(), rate, effective),
    )


def format_simulation(s: Simulation) -> str:
    p = s.predicted
    rows = [
        ("E[K] per window", s.k_mean, p["expected_affected"], "{:.4g}"),
        ("Var[K] per window", s.k_var, p["variance_affected"], "{:.4g}"),
        ("P(any) per window", s.busy_share, p["p_any"], "{:.4f}"),
        ("E[K] per batch", s.batch_k_mean, p["batch_k_mean"], "{:.4g}"),
        ("batch interval, mean s", s.interval_mean_s, p["interval_mean_s"], "{:.5g}"),
        (
            "batch interval, sd s",
            math.sqrt(s.interval_var_s2),
            math.sqrt(p["interval_var_s2"]),
            "{:.5g}",
        ),
        ("wait to batch, mean s", s.wait_mean_s, p["wait_mean_s"], "{:.5g}"),
    ]
    lines = [
        f"policy: window {s.window_s:g}s, flush at {s.max_batch_samples} samples or "
        f"{s.default_deadline_s:g}s deadline - {s.predicted_batch_s:g}s predicted batch - "
        f"{s.deadline_margin_s:g}s margin",
        f"{s.windows} windows of {s.effective_window_s:g}s, {s.deletions} deletions at "
        f"{s.rate:.4g}/s ({s.rate * s.window_s:.3g} per window); {s.batches} batches ("
        + ", ".join(f"{r} {n}" for r, n in s.reasons.items())
        + ")",
        f"{'':24} {'observed':>10} {'predicted':>10}",
    ]
    for name, obs, pred, fmt in rows:
        lines.append(f"{name:24} {fmt.format(obs):>10} {fmt.format(pred):>10}")
    z = (s.k_mean - p["expected_affected"]) / s.k_standard_error if s.k_standard_error else 0.0
    lines.append(
        f"E[K] is {z:+.2f} standard errors from the model; the max wait was {s.wait_max_s:.5g}s"
    )
    if set(s.reasons) - {"window"}:
        lines.append(
            "flushes other than the window's make more batches than the model, "
            "so per-window K exceeds E[K]"
        )
    return "\n".join(lines)
