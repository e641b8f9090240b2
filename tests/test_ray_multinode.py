"""Acceptance for Ray across nodes: two real Ray nodes started with `ray start` (a head that
cannot run tasks and one worker node), eraserd's Ray executor joins them by address, its
retune jobs run on the worker node, and the model is bit for bit the inline executor's.

Everything runs in private network and PID namespaces: only loopback exists, so Ray reaches
nothing else, and `ray stop --force` (on exit, pass or fail) sees only this test's processes.
When the namespace's first process dies, however it dies, the kernel kills every process left
in it, so no raylet survives the test."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from model_views import model_view
from patience import run_patiently

from eraserd.eraser import Eraser

ROOT = Path(__file__).resolve().parent.parent
GCS_PORT = 6379  # the namespace is private: every port is free

DRIVER = """
import json, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
import ray
from conftest import small_raw
from model_views import model_view
from eraserd.config import config_from_dict
from eraserd.executor.ray_backend import RayExecutor
from eraserd.eraser import Eraser

raw = small_raw(Path({state!r}), Path({source!r}), executor={{
    "backend": "ray",
    "ray": {{"address": "127.0.0.1:{port}", "num_gpus_per_job": 0, "num_cpus_per_job": 1,
             "device": "cpu"}}}})
if __name__ == "__main__":
    with Eraser(config_from_dict(raw)) as er:
        manifest = er.build()
        ex = er.executor
        assert isinstance(ex, RayExecutor), type(ex)
        # Where each actor that ran the jobs lives, as its own Ray worker process reports it.
        actor_nodes = ray.get([
            a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
            for a in ex.actors
        ])
        out = {{
            "view": model_view(er),
            "jobs": manifest.change.to_dict()["jobs"],
            "restarts": ex.restarts,
            "actor_nodes": actor_nodes,
            "nodes": [
                {{"id": n["NodeID"], "alive": n["Alive"],
                  "head": "node:__internal_head__" in n["Resources"],
                  "cpus": n["Resources"].get("CPU", 0)}}
                for n in ray.nodes()
            ],
        }}
    Path({out!r}).write_text(json.dumps(out))
"""

# Two nodes on one loopback address: each gets its own random worker and agent ports, and a
# small object store. The head has no CPUs, so no task or actor can be placed on it.
CLUSTER = """
set -eu
ip link set lo up
trap '{ray} stop --force >/dev/null 2>&1 || true' EXIT
trap 'exit 143' HUP INT TERM
common="--num-gpus=0 --object-store-memory=100000000 --min-worker-port=0 --max-worker-port=0 \
  --disable-usage-stats"
{ray} start --head --port={port} --num-cpus=0 --include-dashboard=false $common
{ray} start --address=127.0.0.1:{port} --num-cpus=1 --dashboard-agent-listen-port=52366 $common
{python} {driver}
"""


@pytest.fixture(scope="module")
def inline_build_view(tmp_path_factory, digits_data, lite0_32):
    from conftest import small_raw

    from eraserd.config import config_from_dict

    state = tmp_path_factory.mktemp("inline-build") / "state"
    cfg = config_from_dict(small_raw(state, digits_data / "manifest.csv"))
    with Eraser(cfg, backbone=lite0_32) as er:
        er.build()
        return model_view(er)


def _log_tails(ray_tmp: Path, lines: int = 30) -> str:
    out = []
    for path in sorted(ray_tmp.glob("ray/session_*/logs/*")):
        if path.suffix in (".err", ".out", ".log") and path.stat().st_size:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
    return "\n".join(out)[-8000:]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")
@pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0,
    reason="Ray tests run in private namespaces: needs root and unshare",
)  # decided before the fixtures run, so a skip does not build the inline model first
def test_ray_jobs_run_on_the_worker_node_and_match_inline(tmp_path, digits_data, inline_build_view):
    ray_bin = Path(sys.executable).parent / "ray"
    assert ray_bin.exists(), ray_bin
    out = tmp_path / "result.json"
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(DRIVER).format(
            tests=str(ROOT / "tests"),
            state=str(tmp_path / "state"),
            source=str(digits_data / "manifest.csv"),
            port=GCS_PORT,
            out=str(out),
        )
    )
    script = CLUSTER.format(ray=ray_bin, port=GCS_PORT, python=sys.executable, driver=driver)
    home = tmp_path / "home"
    home.mkdir()
    # Ray's sockets live under RAY_TMPDIR; a short path keeps them under the 107-byte limit.
    ray_tmp = Path(tempfile.mkdtemp(prefix="eraserd-ray-"))
    env = {
        **os.environ,
        "HOME": str(home),
        "RAY_TMPDIR": str(ray_tmp),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    cmd = ["unshare", "--net", "--pid", "--mount-proc", "--kill-child", "sh", "-c", script]
    try:
        proc = run_patiently(cmd, env=env)
        assert proc.returncode == 0, (
            f"{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}\n{_log_tails(ray_tmp)}"
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    result = json.loads(out.read_text())

    nodes = [n for n in result["nodes"] if n["alive"]]
    heads = [n for n in nodes if n["head"]]
    workers = [n for n in nodes if not n["head"]]
    assert len(heads) == 1 and len(workers) == 1, result["nodes"]
    assert heads[0]["cpus"] == 0 and workers[0]["cpus"] == 1, result["nodes"]
    assert result["jobs"], "the build ran no retune job"
    assert result["restarts"] == 0  # the actors asked are the ones that ran every job
    assert result["actor_nodes"], "no Ray actor"
    assert set(result["actor_nodes"]) == {workers[0]["id"]}, (result["actor_nodes"], nodes)
    expected = json.loads(json.dumps(inline_build_view))  # tuples become lists, as in the file
    assert result["view"] == expected
