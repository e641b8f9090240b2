"""The executor interface: run a set of cluster retune jobs, return their results.

Every implementation groups jobs into packs (``plan_packs``) and runs the same pure
``train_pack`` with the same numerics settings, so in deterministic mode results never depend
on which executor, worker, pack or order ran a job.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..config import Config
from ..errors import EraserdError
from ..model.backbone import Backbone
from ..training.engine import ClusterData, train_pack

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
        """Live workers by device (``cpu``, ``cuda:0``, ``ray:GPU`` ...)."""
        ...

    def device_kind(self) -> str:
        """Where jobs run (``cpu``, ``cuda``, ...): part of the train fingerprint, since
        results differ across device kinds."""
        ...

    def close(self) -> None: ...


def schedule_order(jobs: list[RetuneJob]) -> list[RetuneJob]:
    """Largest job first (LPT); ties by key so the order is deterministic."""
    return sorted(jobs, key=lambda j: (-j.cost, j.key))


@dataclass(frozen=True)
class Pack:
    """Clusters trained together in one job on one device (see ``training.engine``)."""

    jobs: tuple[RetuneJob, ...]

    @property
    def key(self) -> str:
        first = self.jobs[0].key
        return first if len(self.jobs) == 1 else f"{first}+{len(self.jobs) - 1}"

    @property
    def cost(self) -> float:
        return sum(j.cost for j in self.jobs)

    @property
    def num_classes(self) -> int:
        return self.jobs[0].num_classes

    def load(self) -> list[ClusterData]:
        return [j.load() for j in self.jobs]

    def results(self, outputs: list, device: str, attempt: int) -> list[JobResult]:
        """``outputs``: one (prompt, weight, bias, seconds) per job, in job order."""
        return [
            JobResult(j.key, p.clone(), w.clone(), b.clone(), s, device, attempt)
            for j, (p, w, b, s) in zip(self.jobs, outputs)
        ]


def pack_limit(cfg: Config, device_kinds: set[str]) -> int:
    """Clusters per pack: ``executor.pack_clusters``, else 1 on CPU and 64 on CUDA; never
    more micro-batches than ``executor.pack_images`` holds."""
    ex = cfg.executor
    wanted = ex.pack_clusters or (64 if "cuda" in device_kinds else 1)
    return max(1, min(wanted, ex.pack_images // cfg.training.batch_size))


def plan_packs(jobs: list[RetuneJob], limit: int, workers: int) -> list[Pack]:
    """Split jobs into packs of at most ``limit`` clusters, balanced by cost, largest first.

    At least one pack per worker while there are jobs enough, so every device gets work. Jobs
    within a pack are ordered by key, so a pack's composition and order depend only on the
    job set (which matters in packed mode, where companions change the rounding).
    """
    if not jobs:
        return []
    count = max(min(len(jobs), max(1, workers)), math.ceil(len(jobs) / limit))
    bins: list[list[RetuneJob]] = [[] for _ in range(count)]
    loads = [0.0] * count
    for job in schedule_order(jobs):
        i = min((i for i in range(count) if len(bins[i]) < limit), key=lambda i: (loads[i], i))
        bins[i].append(job)
        loads[i] += job.cost
    packs = [Pack(tuple(sorted(b, key=lambda j: j.key))) for b in bins if b]
    return sorted(packs, key=lambda p: (-p.cost, p.key))


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


def run_pack(backbone: Backbone, cfg: Config, num_classes: int, datas: list[ClusterData]) -> list:
    """Train a pack; one (prompt, weight, bias, seconds) per cluster, in pack order."""
    trained = train_pack(backbone, datas, cfg.training, cfg.prompt, num_classes)
    return [(r.prompt, r.weight, r.bias, r.seconds) for r in trained]


class InlineExecutor:
    """Runs jobs one after another in the calling process, on its own backbone. A pack whose
    training raises is retried like a failed worker job, up to ``max_retries`` times, then
    fails the run with ``ExecutorError``."""

    def __init__(self, cfg: Config, backbone: Backbone, max_retries: int | None = None):
        self.cfg, self.backbone = cfg, backbone
        self.max_retries = cfg.executor.max_retries if max_retries is None else max_retries

    def run(self, jobs: list[RetuneJob], on_done: OnDone | None = None) -> dict[str, JobResult]:
        out = {}
        limit = pack_limit(self.cfg, {self.backbone.device.type})
        pending = [(pack, 1) for pack in plan_packs(jobs, limit, 1)]
        while pending:
            (pack, attempt), pending = pending[0], pending[1:]
            datas = pack.load()  # reading the store is not the executor's to retry
            try:
                outputs = run_pack(self.backbone, self.cfg, pack.num_classes, datas)
            except Exception as exc:  # as a worker's error: retried, then ExecutorError
                why = f"{type(exc).__name__}: {exc}"
                pending = requeue(pending, pack, attempt, why, self.max_retries)
                continue
            device = str(self.backbone.device)
            for job, res in zip(pack.jobs, pack.results(outputs, device, attempt)):
                out[job.key] = res
                if on_done is not None:
                    on_done(job, res)
        return out

    def device_kind(self) -> str:
        return self.backbone.device.type

    def workers_up(self) -> dict[str, int]:
        return {str(self.backbone.device): 1}

    def close(self) -> None:
        pass
