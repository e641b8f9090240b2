"""The one dispatch loop every backend runs: packs go largest first to free workers; a pack
whose worker reports an error, dies or runs past its own timeout is retried on a fresh worker,
then fails the run with ``ExecutorError``.

A backend supplies only ``Workers``: slots that each run one pack at a time. Timeouts are per
job, measured from the job's own start, so a job cannot outlive its timeout because others
finish around it. Pure: the clock is passed in, and importing this loads no torch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .interfaces import ExecutorError, JobResult, OnDone
from .packing import Pack

log = logging.getLogger("eraserd.executor")


@dataclass(frozen=True)
class Finished:
    slot: int
    outputs: list
    """One (prompt, weight, bias, seconds) per job of the pack, in pack order."""
    device: str


@dataclass(frozen=True)
class Failed:
    slot: int
    why: str
    replace: bool = True
    """The worker is in doubt (it died, or its state may be): start a fresh one."""


Event = Finished | Failed


class Workers(Protocol):
    def idle(self) -> list[int]:
        """Slots whose worker is up and free, preferred first."""
        ...

    def start(self, slot: int, pack: Pack, deadline: float) -> None:
        """Hand ``pack`` to ``slot``. ``deadline`` (on the dispatch clock) is for a backend
        that can only stop a job from inside it; the loop enforces it for the others."""
        ...

    def wait(self, timeout: float) -> list[Event]:
        """Events since the last call, waiting up to ``timeout`` seconds for the first. A
        worker that cannot start raises ``ExecutorError``."""
        ...

    def replace(self, slot: int) -> None:
        """Stop the slot's worker, whatever it is doing, and start a fresh one."""
        ...


def timed_out(seconds: float) -> str:
    return f"timed out after {seconds:g} s"


def requeue(
    pending: list[tuple[Pack, int]], pack: Pack, attempt: int, why: str, max_retries: int
) -> list[tuple[Pack, int]]:
    """Put a failed pack back (largest first), or give up once it has had its retries."""
    keys = ", ".join(j.key for j in pack.jobs)
    log.warning(
        "retune job failed",
        extra={"fields": {"clusters": keys, "attempt": attempt, "why": why}},
    )
    if attempt > max_retries:
        what = f"cluster {keys}" if len(pack.jobs) == 1 else f"clusters {keys}"
        raise ExecutorError(f"{what}: retune failed {attempt} times; last error: {why}")
    return sorted(pending + [(pack, attempt + 1)], key=lambda p: (-p[0].cost, p[0].key))


def dispatch(
    workers: Workers,
    packs: list[Pack],
    *,
    max_retries: int,
    job_timeout_s: float,
    on_done: OnDone | None = None,
    clock: Callable[[], float] = time.monotonic,
    poll_s: float = 0.1,
) -> dict[str, JobResult]:
    """Run every pack; one result per job. On any exception, every busy worker is replaced,
    so that none stays busy with a job of a failed run."""
    pending = [(pack, 1) for pack in packs]
    busy: dict[int, tuple[Pack, int, float]] = {}  # slot -> (pack, attempt, started)
    results: dict[str, JobResult] = {}
    total = sum(len(p.jobs) for p in packs)
    try:
        while len(results) < total:
            for slot in workers.idle():
                if not pending:
                    break
                if slot in busy:
                    continue
                (pack, attempt), pending = pending[0], pending[1:]
                started = clock()
                busy[slot] = (pack, attempt, started)
                workers.start(slot, pack, started + job_timeout_s)
            for event in workers.wait(poll_s):
                if event.slot not in busy:
                    continue  # from a job already given up on
                pack, attempt, _ = busy.pop(event.slot)
                if isinstance(event, Finished):
                    done = pack.results(event.outputs, event.device, attempt)
                    for job, res in zip(pack.jobs, done):
                        results[job.key] = res
                        if on_done is not None:
                            on_done(job, res)
                else:
                    if event.replace:
                        workers.replace(event.slot)
                    pending = requeue(pending, pack, attempt, event.why, max_retries)
            now = clock()
            for slot, (pack, attempt, started) in list(busy.items()):
                if now - started > job_timeout_s:
                    del busy[slot]
                    workers.replace(slot)
                    pending = requeue(pending, pack, attempt, timed_out(job_timeout_s), max_retries)
    except BaseException:
        for slot in busy:
            workers.replace(slot)
        raise
    return results
