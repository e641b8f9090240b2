"""Where retune jobs run: in-process, a local pool of device workers, or Ray."""

from __future__ import annotations

from ..config import Config
from ..model.backbone import Backbone
from .base import (
    Executor,
    ExecutorError,
    InlineExecutor,
    JobResult,
    Pack,
    RetuneJob,
    plan_packs,
    schedule_order,
)

__all__ = [
    "Executor",
    "ExecutorError",
    "JobResult",
    "Pack",
    "RetuneJob",
    "plan_packs",
    "create_executor",
    "schedule_order",
]


def create_executor(cfg: Config, backbone: Backbone) -> Executor:
    ex = cfg.executor
    if ex.backend == "inline":
        return InlineExecutor(cfg, backbone)
    if ex.backend == "local":
        from .local import LocalPool, resolve_devices

        return LocalPool(cfg, resolve_devices(ex.devices), ex.max_retries, ex.job_timeout_s)
    from .ray_backend import RayExecutor

    return RayExecutor(cfg)
