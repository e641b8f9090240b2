"""eraserd: exact machine unlearning for vision models (LMEraser)."""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

__version__ = "0.1.0"

OPENMP_SPINCOUNT = "20000"
"""How long an idle OpenMP thread of torch's CPU kernels spins before it sleeps.

libgomp's default (300,000 spins) is tuned for a machine that runs nothing else. When any
other process wants a core, a CPU training step waits on threads that spin on the cores their
partners need: with two busy processes beside it on 2 cores, a 2-thread retune ran 2 to 7
times slower than with this cap, and slower than one thread. 20,000 spins cost nothing
measurable on a quiet machine (``benchmarks/contention.py``). libgomp reads this when torch
loads it, so it is set here, before any torch import, and every worker inherits it. An
operator's own ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` wins."""


def _default_openmp_spin(env: MutableMapping[str, str]) -> bool:
    """Set the cap unless the operator chose; True when it was set before torch loaded."""
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return False
    env["GOMP_SPINCOUNT"] = OPENMP_SPINCOUNT
    return "torch" not in sys.modules


OPENMP_SPIN_CAPPED = _default_openmp_spin(os.environ)
"""Whether this process's torch runs under the cap (False: the operator chose, or torch was
imported before eraserd, too late for libgomp to see it; child processes get it either way)."""
