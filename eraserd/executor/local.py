"""Local worker pool: one persistent process per device, started with ``spawn``.

Each worker loads the backbone once and trains the jobs it is handed. The parent never
touches CUDA: it decodes images, hands out jobs largest-first to whichever worker is free,
and watches for deaths, errors and timeouts. A failed job is retried on any device, on a
fresh worker, up to ``max_retries`` times.
"""

from __future__ import annotations

import dataclasses
import os
import queue as queue_mod
import signal
import time

import torch
import torch.multiprocessing as mp

from ..config import Config, config_from_dict
from ..faults import crashpoint
from .base import (
    ExecutorError,
    JobResult,
    OnDone,
    Pack,
    RetuneJob,
    pack_limit,
    plan_packs,
    requeue,
    run_pack,
)


def resolve_devices(spec: str | tuple[str, ...]) -> list[str]:
    """``auto``: every visible CUDA device (counted without initialising CUDA), else the CPU."""
    if spec != "auto":
        return list(spec)
    n = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(n)] if n else ["cpu"]


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies (even by SIGKILL)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent check in the loop remains
        pass


def _worker_main(cfg_plain: dict, device: str, parent: int, inbox, outbox) -> None:
    from ..model.backbone import load_backbone
    from ..training.engine import ClusterData, configure_torch

    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above took effect
        return
    crashpoint("worker-start")

    cfg = config_from_dict(cfg_plain)
    runtime = dataclasses.replace(cfg.runtime, device=device)
    configure_torch(runtime)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    backbone = load_backbone(cfg.backbone, runtime)
    outbox.put(("ready", device, os.getpid(), None))
    while True:
        try:
            msg = inbox.get(timeout=1.0)
        except queue_mod.Empty:
            if os.getppid() != parent:
                return
            continue
        if msg is None:
            return
        job_id, num_classes, parts = msg
        try:
            datas = [ClusterData(images, labels, seed) for images, labels, seed in parts]
            outbox.put(("done", device, job_id, run_pack(backbone, cfg, num_classes, datas)))
        except Exception as exc:  # CUDA errors and out-of-memory included: the parent retries
            outbox.put(("error", device, job_id, f"{type(exc).__name__}: {exc}"))
            if isinstance(exc, torch.cuda.OutOfMemoryError) or "CUDA" in str(exc):
                return  # a CUDA context in doubt is not reused


class _Worker:
    def __init__(self, ctx, cfg_plain: dict, device: str, outbox):
        self.device = device
        self.inbox = ctx.Queue()
        self.proc = ctx.Process(
            target=_worker_main,
            args=(cfg_plain, device, os.getpid(), self.inbox, outbox),
            name=f"eraserd-worker-{device}",
            daemon=True,
        )
        self.proc.start()
        self.ready = False
        self.job: tuple[int, Pack, float] | None = None  # (job id, pack, started)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.is_alive():
            try:
                self.inbox.put(None)
            except (OSError, ValueError):
                pass
            self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


class LocalPool:
    def __init__(
        self,
        cfg: Config,
        devices: list[str],
        max_retries: int = 2,
        job_timeout_s: float = 3600.0,
        start_timeout_s: float = 300.0,
    ):
        if not devices:
            raise ExecutorError("executor.devices: no devices to run on")
        self.cfg = cfg
        self.cfg_plain = cfg.to_dict()
        self.devices = list(devices)
        self.max_retries = max_retries
        self.job_timeout_s = job_timeout_s
        self.start_timeout_s = start_timeout_s
        self._ctx = mp.get_context("spawn")
        self._outbox = self._ctx.Queue()
        self.workers: list[_Worker] = [self._spawn(d) for d in self.devices]
        self.restarts = 0
        self.throughput: dict[str, float] = {}
        """Measured image-steps per second on each device (moving average)."""

    def _spawn(self, device: str) -> _Worker:
        return _Worker(self._ctx, self.cfg_plain, device, self._outbox)

    def worker_pids(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for w in self.workers:
            out.setdefault(w.device, []).append(w.proc.pid)
        return out

    def workers_up(self) -> dict[str, int]:
        out = {d: 0 for d in self.devices}
        for w in list(self.workers):  # read from other threads (metrics): no queue access
            if w.proc.is_alive():
                out[w.device] += 1
        return out

    def busy_pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers if w.job is not None and w.proc.is_alive()]

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers = []

    def _replace(self, i: int) -> None:
        old = self.workers[i]
        old.stop(timeout=1.0)
        self.workers[i] = self._spawn(old.device)
        self.restarts += 1

    def run(self, jobs: list[RetuneJob], on_done: OnDone | None = None) -> dict[str, JobResult]:
        try:
            return self._run(jobs, on_done)
        except BaseException:
            # Leave no worker busy with a job of a failed run: the pool serves the next batch.
            for i, w in enumerate(self.workers):
                if w.job is not None or not w.proc.is_alive():
                    self._replace(i)
            raise

    def device_kind(self) -> str:
        return "+".join(sorted({d.split(":")[0] for d in self.devices}))

    def _run(self, jobs: list[RetuneJob], on_done: OnDone | None) -> dict[str, JobResult]:
        limit = pack_limit(self.cfg, {d.split(":")[0] for d in self.devices})
        pending = [(pack, 1) for pack in plan_packs(jobs, limit, len(self.workers))]
        attempts: dict[int, int] = {}
        by_id: dict[int, Pack] = {}
        results: dict[str, JobResult] = {}
        next_id = 0
        spawned_at = {id(w): time.monotonic() for w in self.workers}
        while len(results) < len(jobs):
            # Largest job first, to the fastest free device (measured img-steps/s).
            free = [w for w in self.workers if w.ready and w.job is None and w.proc.is_alive()]
            for w in sorted(free, key=lambda w: -self.throughput.get(w.device, 0.0)):
                if pending:
                    pack, attempt = pending.pop(0)
                    parts = [(d.images, d.labels, d.seed) for d in pack.load()]
                    next_id += 1
                    by_id[next_id], attempts[next_id] = pack, attempt
                    w.inbox.put((next_id, pack.num_classes, parts))
                    w.job = (next_id, pack, time.monotonic())
            try:
                kind, device, ident, payload = self._outbox.get(timeout=0.1)
            except queue_mod.Empty:
                kind = None
            if kind == "ready":
                for w in self.workers:
                    if w.proc.pid == ident:
                        w.ready = True
            elif kind in ("done", "error"):
                w = next((w for w in self.workers if w.job and w.job[0] == ident), None)
                if w is None:
                    continue  # a result from a worker already given up on
                pack, attempt = by_id[ident], attempts[ident]
                w.job = None
                if kind == "done":
                    self._measure(device, pack.cost, sum(out[3] for out in payload))
                    for job, res in zip(pack.jobs, pack.results(payload, device, attempt)):
                        results[job.key] = res
                        if on_done is not None:
                            on_done(job, res)
                else:  # a worker that gave up its CUDA context exits; the check below respawns
                    pending = self._retry(pending, pack, attempt, payload)
            now = time.monotonic()
            for i, w in enumerate(list(self.workers)):  # deaths and timeouts
                dead = not w.proc.is_alive()
                late = w.job is not None and now - w.job[2] > self.job_timeout_s
                stuck = not w.ready and now - spawned_at.get(id(w), now) > self.start_timeout_s
                if dead or late or stuck:
                    if w.job is not None:
                        why = (
                            "worker timed out"
                            if late
                            else f"worker died (exit code {w.proc.exitcode})"
                        )
                        pending = self._retry(pending, w.job[1], attempts[w.job[0]], why)
                    elif stuck or (dead and not w.ready):
                        raise ExecutorError(
                            f"worker on {w.device} failed to start (exit code {w.proc.exitcode})"
                        )
                    self._replace(i)
                    spawned_at[id(self.workers[i])] = time.monotonic()
        return results

    def _measure(self, device: str, cost: float, seconds: float) -> None:
        if seconds > 0:
            rate = cost / seconds
            old = self.throughput.get(device)
            self.throughput[device] = rate if old is None else 0.7 * old + 0.3 * rate

    def _retry(self, pending, pack: Pack, attempt: int, why: str):
        return requeue(pending, pack, attempt, why, self.max_retries)
