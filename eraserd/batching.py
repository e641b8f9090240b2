"""When to flush the deletion queue into a batch. Pure: time and state are passed in."""

from __future__ import annotations

from .config import DaemonConfig
from .queue import Pending


def flush_reason(
    pending: Pending, now: float, last_flush: float, cfg: DaemonConfig, predicted_s: float
) -> str | None:
    """The reason to start a batch now, or None to keep waiting.

    - ``size``: pending samples reached ``max_batch_samples``;
    - ``deadline``: the earliest deadline minus the predicted batch time is within the margin;
    - ``window``: the batch window T has passed since the last flush.
    """
    if pending.requests == 0:
        return None
    if pending.samples >= cfg.max_batch_samples:
        return "size"
    if pending.earliest_deadline is not None and (
        pending.earliest_deadline - predicted_s - cfg.deadline_margin_s <= now
    ):
        return "deadline"
    if now - last_flush >= cfg.batch_window_s:
        return "window"
    return None


def update_estimate(previous: float, observed: float, weight: float = 0.3) -> float:
    """Exponential moving average of batch durations, for the deadline rule."""
    return observed if previous <= 0 else (1 - weight) * previous + weight * observed


def retry_delay(failures: int, base_s: float, cap_s: float) -> float:
    """Seconds to wait after a batch's ``failures``-th failed attempt in a row: doubling from
    ``base_s``, at most ``cap_s``."""
    if failures < 1:
        return 0.0
    return min(cap_s, base_s * 2.0 ** min(failures - 1, 62))
