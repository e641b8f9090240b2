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


def python(script: str, **env: str) -> str:
    """Run ``script`` in a fresh interpreter whose only OpenMP settings are ``env``."""
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


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
    assert python(PROBE, **env) == seen


def test_the_test_process_trains_under_the_cap():
    """conftest imports eraserd before torch, so in-process training runs with the cap."""
    assert eraserd.OPENMP_SPIN_CAPPED or "OMP_WAIT_POLICY" in os.environ


TRAIN = r"""
import hashlib, sys, torch
from eraserd.config import BackboneConfig, PromptConfig, RuntimeConfig, TrainingConfig
from eraserd.model.backbone import load_backbone
from eraserd.training.engine import ClusterData, configure_torch, train_cluster
runtime = RuntimeConfig(device="cpu", num_threads=2, deterministic=True)
configure_torch(runtime)
bb = load_backbone(BackboneConfig(image_size=32), runtime)
g = torch.Generator().manual_seed(0)
data = ClusterData(
    torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8),
    torch.randint(0, 10, (16,), generator=g),
    7,
)
out = train_cluster(bb, data, TrainingConfig(epochs=1, min_steps=6, batch_size=8),
                    PromptConfig(width=4), 10)
h = hashlib.sha256()
for t in (out.prompt, out.weight, out.bias):
    h.update(t.numpy().tobytes())
print(h.hexdigest())
"""


def test_the_spin_setting_changes_timing_not_results():
    """2-thread training gives the same bits under libgomp's default and under the cap."""

    capped, stock = python(TRAIN), python(TRAIN, GOMP_SPINCOUNT="300000")
    assert len(capped) == 64 and capped == stock
