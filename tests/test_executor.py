"""Acceptance for the executors: identical registries whichever runs the jobs; a worker killed
mid-job is replaced and its job retried. Real worker processes, real SIGKILL, real Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from model_views import build_and_forget, forget_two
from patience import run_patiently

from eraserd.eraser import Eraser

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def inline_view(tmp_path_factory, digits_data, lite0_32):
    from conftest import small_raw

    from eraserd.config import config_from_dict

    cfg = config_from_dict(
        small_raw(tmp_path_factory.mktemp("inline") / "state", digits_data / "manifest.csv")
    )
    return build_and_forget(cfg, lite0_32)


@pytest.mark.slow
@pytest.mark.parametrize("devices", [["cpu"], ["cpu", "cpu"]], ids=["1-worker", "2-workers"])
def test_local_pool_matches_inline(make_config, inline_view, devices):
    cfg = make_config(f"pool{len(devices)}", executor={"backend": "local", "devices": devices})
    assert build_and_forget(cfg) == inline_view


@pytest.mark.slow
def test_worker_killed_mid_job_is_retried(make_config, inline_view):
    cfg = make_config("kill", executor={"backend": "local", "devices": ["cpu", "cpu"]})
    killed: list[int] = []

    with Eraser(cfg) as er:
        pool = er.executor

        def killer():
            end = time.monotonic() + 120
            while time.monotonic() < end and not killed:
                busy = pool.busy_pids()
                if busy:
                    time.sleep(0.2)  # let the job get going
                    busy = pool.busy_pids()
                    if busy:
                        os.kill(busy[0], signal.SIGKILL)
                        killed.append(busy[0])
                time.sleep(0.02)

        t = threading.Thread(target=killer)
        t.start()
        manifest = er.build()
        t.join()
        assert killed, "no job was caught running"
        assert pool.restarts >= 1
        assert pool.throughput["cpu"] > 0  # measured image-steps/s, used to place jobs
        import torch

        assert not torch.cuda.is_initialized(), "the parent must never initialise CUDA"
        assert killed[0] not in [p for ps in pool.worker_pids().values() for p in ps]
        retried = [k for k, j in manifest.change.jobs.items() if j.attempts == 2]
        assert retried, manifest.change.jobs
        assert forget_two(er) == inline_view


RAY_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from conftest import small_raw
from model_views import build_and_forget
from eraserd.config import config_from_dict

raw = small_raw(Path({state!r}), Path({source!r}), executor={{
    "backend": "ray",
    "ray": {{"local_num_gpus": 2, "num_gpus_per_job": 1, "device": "cpu"}}}})
if __name__ == "__main__":
    view = build_and_forget(config_from_dict(raw))
    Path({out!r}).write_text(json.dumps(view))
"""


@pytest.mark.slow
@pytest.mark.ray
def test_ray_matches_inline(tmp_path, digits_data, inline_view):
    pytest.importorskip("ray")
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("Ray tests run in a private network namespace: needs root and unshare")
    script = tmp_path / "ray_build.py"
    out = tmp_path / "view.json"
    script.write_text(
        textwrap.dedent(RAY_SCRIPT).format(
            tests=str(ROOT / "tests"),
            state=str(tmp_path / "state"),
            source=str(digits_data / "manifest.csv"),
            out=str(out),
        )
    )
    home = tmp_path / "home"
    home.mkdir()
    # Only loopback exists in the namespace, so Ray binds 127.0.0.1 and reaches nothing else.
    cmd = f"ip link set lo up && exec {sys.executable} {script}"
    env = {**os.environ, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = run_patiently(["unshare", "-n", "sh", "-c", cmd], env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    view = json.loads(out.read_text())
    expected = json.loads(json.dumps(inline_view))  # tuples become lists, as in the file
    assert view == expected
