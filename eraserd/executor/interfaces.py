"""What an executor is: the job it takes, the result it gives back, the error it raises, and
the protocol every backend implements. Importing this module loads no torch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..errors import EraserdError

if TYPE_CHECKING:
    import torch

    from ..training.engine import ClusterData
    from ..training.streaming import ClusterSource


class ExecutorError(EraserdError):
    """A retune job kept failing (an error, a dead worker or a timeout, each retried), or the
    executor is closed; the batch fails and the previous version keeps serving."""


@dataclass(frozen=True)
class RetuneJob:
    key: str
    """The cluster key."""
    cost: float
    """Relative cost for scheduling: cluster size x epochs."""
    num_classes: int
    load: Callable[[], ClusterData] = field(repr=False)
    """Loads the job's images in this process, just before dispatch: for a backend whose
    workers cannot read the store (Ray), and for jobs with no ``source``."""
    source: ClusterSource | None = field(default=None, repr=False)
    """Where the job's images are in the store: a worker on this machine reads them itself,
    straight into its training buffer, and this process never holds them."""


@dataclass(frozen=True)
class JobResult:
    key: str
    prompt: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    seconds: float
    device: str
    attempts: int


OnDone = Callable[[RetuneJob, JobResult], object]
"""Called as each job finishes; what it returns is ignored."""


class Executor(Protocol):
    """Runs retune jobs. Every backend (inline, local, ray) keeps the same contract, which
    ``tests/test_executor_contract.py`` checks on all three:

    * ``run`` returns one result per job, bit for bit the same on every backend in
      deterministic mode, and calls ``on_done`` as each job finishes;
    * a job whose worker dies, raises or runs past ``executor.job_timeout_s`` is retried, on a
      fresh worker, up to ``executor.max_retries`` times; then ``run`` raises
      ``ExecutorError`` naming the cluster, the attempts and the last error;
    * after a failed ``run`` the executor serves the next one;
    * ``close`` stops every worker it started; ``run`` after ``close`` raises
      ``ExecutorError``.
    """

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
