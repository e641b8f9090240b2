"""When to flush the deletion queue into a batch. Pure: time and state are passed in.

``FlushPolicy`` is the one owner of the batch window: its start, the tick cadence, and the
size, deadline and window rules. The daemon drives it on the wall clock and ``simulate``
on a virtual one, with the same calls: ``on_submit`` after a request is queued, ``on_tick``
every ``tick_s``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import DaemonConfig
from .queue import Pending


@dataclass(frozen=True)
class Tick:
    reason: str | None
    """Why to start a batch now (``flush_reason``), or None."""
    ended_window_s: float | None
    """The length of the window this tick ended, or None if the window goes on."""


class FlushPolicy:
    """The batch window and the rules that flush it (see the module docstring)."""

    def __init__(self, cfg: DaemonConfig, start: float):
        self.cfg = cfg
        self.window_start = start

    @property
    def tick_s(self) -> float:
        """How often ``on_tick`` runs: a quarter of the window, at most a second."""
        return min(1.0, self.cfg.batch_window_s / 4)

    @property
    def next_window_at(self) -> float:
        return self.window_start + self.cfg.batch_window_s

    def on_submit(self, pending: Pending) -> str | None:
        """After a request is queued: ``"size"`` once ``max_batch_samples`` are pending."""
        return "size" if pending.samples >= self.cfg.max_batch_samples else None

    def on_tick(self, pending: Pending, now: float, predicted_s: float) -> Tick:
        """The reason to flush now, if any; a window that has run ``batch_window_s`` ends
        here and the next one starts (so a window lasts ``T`` rounded up to a tick)."""
        reason = flush_reason(pending, now, self.window_start, self.cfg, predicted_s)
        ended = None
        if now - self.window_start >= self.cfg.batch_window_s:
            ended, self.window_start = now - self.window_start, now
        return Tick(reason, ended)


def flush_reason(
    pending: Pending, now: float, window_start: float, cfg: DaemonConfig, predicted_s: float
) -> str | None:
    """The reason to start a batch now, or None to keep waiting.

    - ``size``: pending samples reached ``max_batch_samples``;
    - ``deadline``: the earliest deadline minus the predicted batch time is within the margin;
    - ``window``: the batch window T has passed since ``window_start``.
    """
    if pending.requests == 0:
        return None
    if pending.samples >= cfg.max_batch_samples:
        return "size"
    if pending.earliest_deadline is not None and (
        pending.earliest_deadline - predicted_s - cfg.deadline_margin_s <= now
    ):
        return "deadline"
    if now - window_start >= cfg.batch_window_s:
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
