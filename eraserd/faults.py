"""Fault points for the crash and recovery tests. Unset (always, in production), they do nothing.

* ``ERASERD_CRASHPOINT=name``: the process SIGKILLs itself when it reaches that point.
* ``ERASERD_FAULT=name[,name...]``: those points raise ``OSError(ENOSPC)``, as a full disk
  would.
* ``ERASERD_CRASHPOINT_WHILE=path``, ``ERASERD_FAULT_WHILE=path`` (optional): fire only while
  ``path`` exists, so that a test can end the fault (space returns, a worker starts again)
  without a restart.

Points: ``retuning``, ``written``, ``swapped`` and ``purging`` in a forget (``Eraser.forget``
events; ``purging`` also on a retry that only finishes a published batch),
``record`` where the daemon records a failed attempt, ``worker-start`` when a retune worker
starts (a crash there is a worker that dies while starting), ``submit`` just before a
submission is committed.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "ERASERD_CRASHPOINT"
FAULT_ENV = "ERASERD_FAULT"
POINTS = ("retuning", "written", "swapped", "purging", "record", "worker-start", "submit")


def _armed(env: str, name: str) -> bool:
    if name not in os.environ.get(env, "").split(","):
        return False
    path = os.environ.get(env + "_WHILE")
    return path is None or os.path.exists(path)


def crashpoint(name: str) -> None:
    """Die here (SIGKILL) or fail here (ENOSPC), if a test asked for it."""
    if _armed(ENV, name):
        os.kill(os.getpid(), signal.SIGKILL)
    if _armed(FAULT_ENV, name):
        raise OSError(errno.ENOSPC, f"No space left on device (fault point {name!r})")
