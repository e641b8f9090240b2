"""Ray backend: retune jobs on Ray actors, one GPU per job, backbone loaded once per actor.

Install with ``pip install 'eraserd[ray]'``. ``executor.ray.address`` joins an existing
cluster (``auto`` or ``ray://head:10001``); without it a local Ray is started.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from ..config import Config, config_from_dict
from .dispatch import Event, Failed, Finished, dispatch
from .interfaces import ExecutorError, JobResult, OnDone, RetuneJob
from .packing import Pack, pack_limit, plan_packs


class _RetuneActor:
    """Lives on a Ray worker: loads the backbone once, then trains the jobs it is given."""

    def __init__(self, cfg_plain: dict, device_pref: str):
        import torch

        from ..model.backbone import load_backbone
        from ..training.engine import configure_torch

        cfg = config_from_dict(cfg_plain)
        if device_pref == "auto":
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        else:
            device = device_pref
        runtime = dataclasses.replace(cfg.runtime, device=device)
        configure_torch(runtime)
        self.cfg, self.device = cfg, device
        self.backbone = load_backbone(cfg.backbone, runtime)

    def pid(self) -> int:
        return os.getpid()

    def train(self, num_classes: int, parts: list):
        from ..training.engine import ClusterData
        from .inline import run_pack

        datas = [ClusterData(images, labels, seed) for images, labels, seed in parts]
        return run_pack(self.backbone, self.cfg, num_classes, datas), self.device


class RayExecutor:
    def __init__(self, cfg: Config):
        try:
            import ray
        except ImportError:
            raise ExecutorError(
                "executor.backend: ray is not installed; pip install 'eraserd[ray]'"
            ) from None
        self._ray = ray
        rc = cfg.executor.ray
        self.max_retries = cfg.executor.max_retries
        self.job_timeout_s = cfg.executor.job_timeout_s
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if rc.address:
                ray.init(address=rc.address, **kwargs)
            else:
                ray.init(num_gpus=rc.local_num_gpus, **kwargs)
        gpus = ray.cluster_resources().get("GPU", 0)
        if rc.num_gpus_per_job > 0:
            n = int(gpus // rc.num_gpus_per_job)
            if n < 1:
                raise ExecutorError(
                    f"executor.ray: the Ray cluster has {gpus:g} GPUs, fewer "
                    f"than num_gpus_per_job={rc.num_gpus_per_job:g}"
                )
        else:
            n = max(1, int(ray.cluster_resources().get("CPU", 1) // rc.num_cpus_per_job))
        self._gpu = rc.num_gpus_per_job > 0
        self._actor_cls = ray.remote(num_gpus=rc.num_gpus_per_job, num_cpus=rc.num_cpus_per_job)(
            _RetuneActor
        )
        self.cfg = cfg
        self._device_pref = rc.device
        self._args = (cfg.to_dict(), rc.device)
        self.actors, self._pids = [], []
        for _ in range(n):
            actor, pid = self._new_actor()
            self.actors.append(actor)
            self._pids.append(pid)
        self._busy: dict = {}  # object ref of a running job -> slot
        self.restarts = 0

    def workers_up(self) -> dict[str, int]:
        """Actors by the resource they hold; a dead actor is replaced when its job fails."""
        kind = "ray:GPU" if self._gpu else "ray:CPU"
        return {kind: len(self.actors)}

    def device_kind(self) -> str:
        if self._device_pref != "auto":
            return self._device_pref.split(":")[0]
        return "ray-gpu" if self._gpu else "cpu"

    def _new_actor(self):
        # Any: Ray types an actor handle's methods as plain callables, without their .remote.
        actor: Any = self._actor_cls.remote(*self._args)
        return actor, actor.pid.remote()  # queued first: answered once the actor is up

    def actor_pids(self) -> list[int]:
        return self._ray.get(list(self._pids))

    def busy_pids(self) -> list[int]:
        """The worker processes of actors running a job (each answered its pid first)."""
        slots = [i for i in self._busy.values()]
        return self._ray.get([self._pids[i] for i in slots]) if slots else []

    def run(self, jobs: list[RetuneJob], on_done: OnDone | None = None) -> dict[str, JobResult]:
        if not self.actors:
            raise ExecutorError("the executor is closed")
        limit = pack_limit(self.cfg, {"cuda" if self._gpu else "cpu"})
        return dispatch(
            self,
            plan_packs(jobs, limit, len(self.actors)),
            max_retries=self.max_retries,
            job_timeout_s=self.job_timeout_s,
            on_done=on_done,
        )

    # Workers
    def idle(self) -> list[int]:
        """Free actors that are up (answered their pid; one that failed to start counts as
        up, and its job fails like a dead worker's)."""
        busy = set(self._busy.values())
        free = [i for i in range(len(self.actors)) if i not in busy]
        if not free:
            return []
        refs = [self._pids[i] for i in free]
        up, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
        up_ids = {id(r) for r in up}
        return [i for i in free if id(self._pids[i]) in up_ids]

    def start(self, slot: int, pack: Pack, deadline: float) -> None:
        parts = [(d.images, d.labels, d.seed) for d in pack.load()]
        self._busy[self.actors[slot].train.remote(pack.num_classes, parts)] = slot

    def wait(self, timeout: float) -> list[Event]:
        ray = self._ray
        if not self._busy:
            time.sleep(timeout)  # actors still starting
            return []
        done, _ = ray.wait(list(self._busy), num_returns=len(self._busy), timeout=timeout)
        events: list[Event] = []
        for ref in done:
            slot = self._busy.pop(ref)
            try:
                outputs, device = ray.get(ref)
            except (
                ray.exceptions.RayActorError,
                ray.exceptions.RayTaskError,
                ray.exceptions.WorkerCrashedError,
            ) as exc:
                events.append(Failed(slot, _ray_reason(exc)))
                continue
            events.append(Finished(slot, outputs, device))
        return events

    def replace(self, slot: int) -> None:
        for ref, i in list(self._busy.items()):
            if i == slot:
                del self._busy[ref]
        self._ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot], self._pids[slot] = self._new_actor()
        self.restarts += 1

    def close(self) -> None:
        for a in self.actors:
            try:
                self._ray.kill(a, no_restart=True)
            except Exception:  # the cluster may already be gone
                pass
        self.actors, self._pids, self._busy = [], [], {}
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()


def _ray_reason(exc: Exception) -> str:
    """The task's own error where it raised one (``ValueError: ...``), else Ray's."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, Exception):
        return f"{type(cause).__name__}: {cause}"
    return type(exc).__name__
