"""eraserd caps how long torch's idle OpenMP threads spin, before torch loads, unless the
operator chose a wait policy. The speed this buys on a busy machine is measured in
``benchmarks/contention.py``; ``tests/test_load.py`` runs training under load with it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import eraserd

PROBE = (
    "import os, eraserd, torch; "
    "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'), "
    "eraserd.OPENMP_SPIN_CAPPED)"
)


def probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return out.stdout.strip()


@pytest.mark.parametrize(
    "env, seen",
    [
        ({}, f"{eraserd.OPENMP_SPINCOUNT} None True"),
        ({"GOMP_SPINCOUNT": "5"}, "5 None False"),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "None ACTIVE False"),
    ],
    ids=["default", "operator-spincount", "operator-policy"],
)
def test_spin_default_yields_to_the_operator(env, seen):
    assert probe(**env) == seen


def test_the_test_process_trains_under_the_cap():
    """conftest imports eraserd before torch, so in-process training runs with the cap."""
    assert eraserd.OPENMP_SPIN_CAPPED or "OMP_WAIT_POLICY" in os.environ
