"""Local worker pool: one persistent process per device, started with ``spawn``.

Each worker loads the backbone once and trains the jobs it is handed. The parent never
touches CUDA and, for jobs that say where their images are in the store, never touches
pixels either: the worker reads them itself (``training/streaming.py``). The parent hands
out jobs largest-first to whichever worker is free, and watches for deaths, errors and
timeouts. A failed job is retried on any device, on a
fresh worker, up to ``max_retries`` times.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue as queue_mod
import signal
import time

import torch
import torch.multiprocessing as mp

from ..config import Config, config_from_dict
from ..faults import crashpoint
from .dispatch import Event, Failed, Finished, dispatch
from .inline import run_pack
from .interfaces import ExecutorError, JobResult, OnDone, RetuneJob
from .packing import Pack, pack_limit, plan_packs

log = logging.getLogger("eraserd.executor")


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
    from ..training.engine import ClusterData, PackImages, configure_torch
    from ..training.streaming import read_pack

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
        job_id, num_classes, kind, parts = msg
        try:
            datas: list[ClusterData] | PackImages
            if kind == "sources":
                datas = read_pack(parts, cfg.training.augment.crop_padding)
            else:
                datas = [ClusterData(images, labels, seed) for images, labels, seed in parts]
            outputs = run_pack(backbone, cfg, num_classes, datas)
            # By value (numpy), not as torch's shared-memory handles: those can be opened only
            # while this process lives, and a worker replaced right after it answered is gone.
            plain = [(p.numpy(), w.numpy(), b.numpy(), sec) for p, w, b, sec in outputs]
            outbox.put(("done", device, job_id, plain))
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
        self.spawned = time.monotonic()
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
    """The ``local`` backend: ``Workers`` over one process per device, run by ``dispatch``."""

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
        self._next_id = 0
        self._closed = False
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
        self._closed = True
        for w in self.workers:
            w.stop()
        self.workers = []

    def device_kind(self) -> str:
        return "+".join(sorted({d.split(":")[0] for d in self.devices}))

    def run(self, jobs: list[RetuneJob], on_done: OnDone | None = None) -> dict[str, JobResult]:
        if self._closed:
            raise ExecutorError("the executor is closed")
        limit = pack_limit(self.cfg, {d.split(":")[0] for d in self.devices})
        try:
            return dispatch(
                self,
                plan_packs(jobs, limit, len(self.workers)),
                max_retries=self.max_retries,
                job_timeout_s=self.job_timeout_s,
                on_done=on_done,
            )
        except BaseException:
            for i, w in enumerate(self.workers):  # the next batch finds every worker up
                if not w.proc.is_alive():
                    self.replace(i)
            raise

    # Workers
    def idle(self) -> list[int]:
        """Free workers, the fastest device first (measured image-steps/s)."""
        free = [
            i for i, w in enumerate(self.workers) if w.ready and w.job is None and w.proc.is_alive()
        ]
        return sorted(free, key=lambda i: -self.throughput.get(self.workers[i].device, 0.0))

    def start(self, slot: int, pack: Pack, deadline: float) -> None:
        sources = pack.sources()
        parts: list
        if sources is not None:  # the worker reads the images: none pass through here
            kind, parts = "sources", sources
        else:
            kind, parts = "images", [(d.images, d.labels, d.seed) for d in pack.load()]
        self._next_id += 1
        w = self.workers[slot]
        w.inbox.put((self._next_id, pack.num_classes, kind, parts))
        w.job = (self._next_id, pack, time.monotonic())

    def replace(self, slot: int) -> None:
        old = self.workers[slot]
        old.stop(timeout=1.0)
        self.workers[slot] = self._spawn(old.device)
        self.restarts += 1

    def wait(self, timeout: float) -> list[Event]:
        events: list[Event] = []
        try:
            kind, device, ident, payload = self._outbox.get(timeout=timeout)
        except queue_mod.Empty:
            kind = None
        except (OSError, EOFError) as exc:  # a message its dead sender can no longer complete
            log.warning("unreadable worker message dropped", extra={"fields": {"why": str(exc)}})
            kind = None
        if kind == "ready":
            for w in self.workers:
                if w.proc.pid == ident:
                    w.ready = True
        elif kind in ("done", "error"):
            slot = next(
                (i for i, w in enumerate(self.workers) if w.job and w.job[0] == ident), None
            )
            if slot is not None:  # else: from a worker already given up on
                job = self.workers[slot].job
                assert job is not None  # the slot was found by its job
                _, pack, _ = job
                self.workers[slot].job = None
                if kind == "done":
                    self._measure(device, pack.cost, sum(out[3] for out in payload))
                    outputs = [
                        (torch.from_numpy(p), torch.from_numpy(w), torch.from_numpy(b), sec)
                        for p, w, b, sec in payload
                    ]
                    events.append(Finished(slot, outputs, device))
                else:  # a worker that gave up its CUDA context exits; the check below respawns
                    events.append(Failed(slot, payload, replace=False))
        now = time.monotonic()
        for i, w in enumerate(list(self.workers)):
            if w.proc.is_alive():
                if not w.ready and now - w.spawned > self.start_timeout_s:
                    raise ExecutorError(
                        f"worker on {w.device} did not start in {self.start_timeout_s:g} s"
                    )
                continue
            if w.job is not None:
                w.job = None
                events.append(Failed(i, f"worker died (exit code {w.proc.exitcode})"))
            elif not w.ready:
                raise ExecutorError(
                    f"worker on {w.device} failed to start (exit code {w.proc.exitcode})"
                )
            else:  # died idle, or exited after reporting an error: respawn quietly
                self.replace(i)
        return events

    def _measure(self, device: str, cost: float, seconds: float) -> None:
        if seconds > 0:
            rate = cost / seconds
            old = self.throughput.get(device)
            self.throughput[device] = rate if old is None else 0.7 * old + 0.3 * rate
