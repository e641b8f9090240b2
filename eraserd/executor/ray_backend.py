"""Ray backend: retune jobs on Ray actors, one GPU per job, backbone loaded once per actor.

Install with ``pip install 'eraserd[ray]'``. ``executor.ray.address`` joins an existing
cluster (``auto`` or ``ray://head:10001``); without it a local Ray is started.
"""

from __future__ import annotations

import dataclasses
import os

from ..config import Config, config_from_dict
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
            kwargs = {"include_dashboard": False, "log_to_driver": False}
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
        self.actors = [self._actor_cls.remote(*self._args) for _ in range(n)]
        self.restarts = 0

    def workers_up(self) -> dict[str, int]:
        """Actors by the resource they hold; a dead actor is replaced when its job fails."""
        kind = "ray:GPU" if self._gpu else "ray:CPU"
        return {kind: len(self.actors)}

    def device_kind(self) -> str:
        if self._device_pref != "auto":
            return self._device_pref.split(":")[0]
        return "ray-gpu" if self._gpu else "cpu"

    def actor_pids(self) -> list[int]:
        return self._ray.get([a.pid.remote() for a in self.actors])

    def _restart(self, i: int) -> None:
        self._ray.kill(self.actors[i], no_restart=True)
        self.actors[i] = self._actor_cls.remote(*self._args)
        self.restarts += 1

    def run(self, jobs: list[RetuneJob], on_done: OnDone | None = None) -> dict[str, JobResult]:
        inflight: dict = {}
        try:
            return self._run(jobs, on_done, inflight)
        except BaseException:
            for i, _, _ in list(inflight.values()):  # no actor stays busy with a failed run
                self._restart(i)
            raise

    def _run(
        self, jobs: list[RetuneJob], on_done: OnDone | None, inflight: dict
    ) -> dict[str, JobResult]:
        ray = self._ray
        kinds = {"cuda" if self._gpu else "cpu"}
        limit = pack_limit(self.cfg, kinds)
        pending = [(pack, 1) for pack in plan_packs(jobs, limit, len(self.actors))]
        free = list(range(len(self.actors)))
        results: dict[str, JobResult] = {}
        while len(results) < len(jobs):
            while free and pending:
                pack, attempt = pending.pop(0)
                i = free.pop(0)
                parts = [(d.images, d.labels, d.seed) for d in pack.load()]
                ref = self.actors[i].train.remote(pack.num_classes, parts)
                inflight[ref] = (i, pack, attempt)
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=self.job_timeout_s)
            if not done:
                for i, pack, attempt in list(inflight.values()):
                    pending = self._retry(pending, pack, attempt, "job timed out")
                    self._restart(i)
                    free.append(i)
                inflight.clear()
                continue
            ref = done[0]
            i, pack, attempt = inflight.pop(ref)
            try:
                outputs, device = ray.get(ref)
            except (
                ray.exceptions.RayActorError,
                ray.exceptions.RayTaskError,
                ray.exceptions.WorkerCrashedError,
            ) as exc:
                pending = self._retry(pending, pack, attempt, f"{type(exc).__name__}")
                self._restart(i)
                free.append(i)
                continue
            free.append(i)
            for job, res in zip(pack.jobs, pack.results(outputs, device, attempt)):
                results[job.key] = res
                if on_done is not None:
                    on_done(job, res)
        return results

    def _retry(self, pending, pack: Pack, attempt: int, why: str):
        return requeue(pending, pack, attempt, why, self.max_retries)

    def close(self) -> None:
        for a in self.actors:
            try:
                self._ray.kill(a, no_restart=True)
            except Exception:  # the cluster may already be gone
                pass
        self.actors = []
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()
