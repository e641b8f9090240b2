"""Exactness on a busy machine: the crash-and-retry path trains the same bits under load.

Background processes keep every core busy while a model is built, a clustering-sample point
is forgotten, the forget crashes after the swap and before the purge, and is retried. The
result must pass ``verify`` and hold exactly the prompts and heads of the same steps run on
a quiet machine. The load is bounded: it is killed when the test ends, pass or fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager

import pytest
from conftest import forget_crashing_before_purge

from eraserd import checks
from eraserd.eraser import Eraser

SPIN = "import time\nend = time.monotonic() + 900\nwhile time.monotonic() < end: pass\n"
"""A busy loop that ends on its own after 15 minutes, should anything outlive the test."""


@contextmanager
def busy(cores: int):
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(cores)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=60)


def crash_and_retry(cfg, backbone) -> dict:
    """Build, forget a sample point with a crash before the purge, retry: the final version."""
    with Eraser(cfg, backbone=backbone) as er:
        er.build()
        victim = next(r["sample_id"] for r in er.samples() if r["in_clustering_sample"])
        forget_crashing_before_purge(er, [victim])
    with Eraser(cfg, backbone=backbone) as er:
        result = er.forget(sample_ids=[victim])
        assert result.retrained == [] and victim not in {r.sample_id for r in er.store.rows()}
        return er.registry.load()


def tensors(manifest) -> dict[str, tuple[str, str]]:
    return {c.key: (c.prompt, c.head) for c in manifest.clusters}


@pytest.mark.slow
def test_crash_and_retry_under_load_trains_the_quiet_bits(make_config, lite0_32):
    cores = os.cpu_count() or 2
    # The same path on less work: one epoch, two clusters.
    light = {"training": {"epochs": 1, "warmup_epochs": 0}, "clustering": {"n_clusters": 2}}
    cfg = make_config("loaded", **light)
    with busy(cores) as procs:
        loaded = crash_and_retry(cfg, lite0_32)
        with Eraser(cfg, backbone=lite0_32) as er:
            report = checks.verify(er)
        assert all(p.poll() is None for p in procs), "the load must last the whole run"
    assert report["identical"], report
    quiet = crash_and_retry(make_config("quiet", **light), lite0_32)
    assert tensors(loaded) == tensors(quiet)
    assert loaded.prototypes == quiet.prototypes
