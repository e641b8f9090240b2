"""Where retune jobs run: in-process, a local pool of device workers, or Ray.

``interfaces`` says what an executor is, ``packing`` which clusters train together,
``dispatch`` is the loop every backend runs, and ``inline``, ``local`` and ``ray_backend``
are the backends. Importing this package loads no torch; ``create_executor`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .interfaces import Executor, ExecutorError, JobResult, OnDone, RetuneJob
from .packing import Pack, pack_limit, plan_packs, schedule_order

if TYPE_CHECKING:
    from ..config import Config
    from ..model.backbone import Backbone

__all__ = [
    "Executor",
    "ExecutorError",
    "JobResult",
    "OnDone",
    "Pack",
    "RetuneJob",
    "create_executor",
    "pack_limit",
    "plan_packs",
    "schedule_order",
]


def create_executor(cfg: Config, backbone: Backbone) -> Executor:
    ex = cfg.executor
    if ex.backend == "inline":
        from .inline import InlineExecutor

        return InlineExecutor(cfg, backbone)
    if ex.backend == "local":
        from .local import LocalPool, resolve_devices

        return LocalPool(cfg, resolve_devices(ex.devices), ex.max_retries, ex.job_timeout_s)
    from .ray_backend import RayExecutor

    return RayExecutor(cfg)
