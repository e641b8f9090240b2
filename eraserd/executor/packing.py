"""Which clusters train together, and in what order: pure, and the same for every backend."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .interfaces import JobResult, RetuneJob

if TYPE_CHECKING:
    from ..config import Config
    from ..training.engine import ClusterData
    from ..training.streaming import ClusterSource


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

    def sources(self) -> list[ClusterSource] | None:
        """Where every job's images are in the store; None unless every job says."""
        found = [j.source for j in self.jobs]
        return None if any(s is None for s in found) else found  # type: ignore[return-value]

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
