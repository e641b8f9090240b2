"""The executor interface: run a set of cluster retune jobs, return their results.

Every implementation runs the same pure ``train_cluster`` with the same numerics settings,
so results never depend on which executor, worker or order ran a job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..config import Config
from ..errors import EraserdError
from ..model.backbone import Backbone
from ..training.engine import ClusterData, train_cluster

log = logging.getLogger("eraserd.executor")


class ExecutorError(EraserdError):
    """A retune job kept failing; the batch fails and the previous version keeps serving."""


@dataclass(frozen=True)
class RetuneJob:
    key: str
    """The cluster key."""
    cost: float
    """Relative cost for scheduling: cluster size x epochs."""
    num_classes: int
    load: Callable[[], ClusterData] = field(repr=False)
    """Loads the job's data in the parent, just before dispatch (keeps memory bounded)."""


@dataclass(frozen=True)
class JobResult:
    key: str
    prompt: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    seconds: float
    device: str
    attempts: int


OnDone = Callable[[RetuneJob, JobResult], None]


class Executor(Protocol):
    def run(self, jobs: list[RetuneJob], on_done: OnDone | None = None) -> dict[str, JobResult]:
        """Run every job; raise ``ExecutorError`` if one keeps failing."""
        ...

    def workers_up(self) -> dict[str, int]:
        """Live, ready workers by device (``cpu``, ``cuda:0``, ``ray:GPU`` ...)."""
        ...

    def close(self) -> None: ...


def schedule_order(jobs: list[RetuneJob]) -> list[RetuneJob]:
    """Largest job first (LPT); ties by key so the order is deterministic."""
    return sorted(jobs, key=lambda j: (-j.cost, j.key))


def requeue(
    pending: list[tuple[RetuneJob, int]], job: RetuneJob, attempt: int, why: str, max_retries: int
) -> list[tuple[RetuneJob, int]]:
    """Put a failed job back (largest first), or give up once it has had its retries."""
    log.warning(
        "retune job failed", extra={"fields": {"cluster": job.key, "attempt": attempt, "why": why}}
    )
    if attempt > max_retries:
        raise ExecutorError(f"cluster {job.key}: retune failed {attempt} times; last error: {why}")
    return sorted(pending + [(job, attempt + 1)], key=lambda p: (-p[0].cost, p[0].key))


def run_job(backbone: Backbone, cfg: Config, num_classes: int, data: ClusterData):
    return train_cluster(backbone, data, cfg.training, cfg.prompt, num_classes)


class InlineExecutor:
    """Runs jobs one after another in the calling process, on its own backbone."""

    def __init__(self, cfg: Config, backbone: Backbone):
        self.cfg, self.backbone = cfg, backbone

    def run(self, jobs: list[RetuneJob], on_done: OnDone | None = None) -> dict[str, JobResult]:
        out = {}
        for job in schedule_order(jobs):
            r = run_job(self.backbone, self.cfg, job.num_classes, job.load())
            res = JobResult(
                job.key, r.prompt, r.weight, r.bias, r.seconds, str(self.backbone.device), 1
            )
            out[job.key] = res
            if on_done is not None:
                on_done(job, res)
        return out

    def workers_up(self) -> dict[str, int]:
        return {str(self.backbone.device): 1}

    def close(self) -> None:
        pass
