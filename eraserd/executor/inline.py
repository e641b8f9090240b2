"""The in-process executor, and ``run_pack``: the training of one pack, which every backend's
worker calls."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config import Config
from ..model.backbone import Backbone
from ..training.engine import ClusterData, PackImages, train_pack
from ..training.streaming import read_pack
from .dispatch import Event, Failed, Finished, dispatch, timed_out
from .interfaces import ExecutorError, JobResult, OnDone, RetuneJob
from .packing import Pack, pack_limit, plan_packs


def run_pack(
    backbone: Backbone,
    cfg: Config,
    num_classes: int,
    datas: list[ClusterData] | PackImages,
    on_step: Callable[[int], None] | None = None,
) -> list:
    """Train a pack; one (prompt, weight, bias, seconds) per cluster, in pack order."""
    trained = train_pack(backbone, datas, cfg.training, cfg.prompt, num_classes, on_step)
    return [(r.prompt, r.weight, r.bias, r.seconds) for r in trained]


class _Overtime(Exception):
    pass


class InlineExecutor:
    """Runs jobs one after another in the calling process, on its own backbone, through the
    same dispatch loop as the worker pools. A pack whose training raises is retried up to
    ``max_retries`` times, then fails the run with ``ExecutorError``. A job past
    ``job_timeout_s`` stops at its next training step and counts as failed. There is no
    worker to kill: a crash here is the daemon's own, which the crash-point tests cover."""

    def __init__(
        self,
        cfg: Config,
        backbone: Backbone,
        max_retries: int | None = None,
        job_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cfg, self.backbone, self.clock = cfg, backbone, clock
        ex = cfg.executor
        self.max_retries = ex.max_retries if max_retries is None else max_retries
        self.job_timeout_s = ex.job_timeout_s if job_timeout_s is None else job_timeout_s
        self._job: tuple[Pack, float] | None = None
        self._closed = False

    def run(self, jobs: list[RetuneJob], on_done: OnDone | None = None) -> dict[str, JobResult]:
        if self._closed:
            raise ExecutorError("the executor is closed")
        limit = pack_limit(self.cfg, {self.backbone.device.type})
        return dispatch(
            self,
            plan_packs(jobs, limit, 1),
            max_retries=self.max_retries,
            job_timeout_s=self.job_timeout_s,
            on_done=on_done,
            clock=self.clock,
        )

    # Workers: one slot, whose job runs inside ``wait``.
    def idle(self) -> list[int]:
        return [] if self._job is not None else [0]

    def start(self, slot: int, pack: Pack, deadline: float) -> None:
        self._job = (pack, deadline)

    def wait(self, timeout: float) -> list[Event]:
        if self._job is None:
            return []
        (pack, deadline), self._job = self._job, None
        sources = pack.sources()  # reading the store is not the executor's to retry
        datas = (
            read_pack(sources, self.cfg.training.augment.crop_padding)
            if sources is not None
            else pack.load()
        )

        def check(_images: int) -> None:
            if self.clock() > deadline:
                raise _Overtime

        try:
            outputs = run_pack(self.backbone, self.cfg, pack.num_classes, datas, check)
        except _Overtime:
            return [Failed(0, timed_out(self.job_timeout_s), replace=False)]
        except Exception as exc:  # as a worker's error: retried, then ExecutorError
            return [Failed(0, f"{type(exc).__name__}: {exc}", replace=False)]
        return [Finished(0, outputs, str(self.backbone.device))]

    def replace(self, slot: int) -> None:
        self._job = None

    def device_kind(self) -> str:
        return self.backbone.device.type

    def workers_up(self) -> dict[str, int]:
        return {} if self._closed else {str(self.backbone.device): 1}

    def close(self) -> None:
        self._closed = True
