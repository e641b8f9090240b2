"""The executor contract (``eraserd/executor/interfaces.py``), checked the same way on every
backend: in-process, the local worker pool, and Ray. Real worker processes, real SIGKILL, a
real Ray inside a private network namespace. The scenarios live in ``executor_contract.py``;
each backend runs them once, and every test here judges one scenario on every backend."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from executor_contract import reference, run_contract
from patience import run_patiently

TESTS = Path(__file__).resolve().parent
BACKENDS = ["inline", "local", pytest.param("ray", marks=pytest.mark.ray)]
EXECUTOR = {"max_retries": 1, "devices": ["cpu"]}
RAY = {"local_num_gpus": 2, "num_gpus_per_job": 1, "device": "cpu"}
"""Two fake GPUs, one per job, trained on the CPU: Ray schedules by GPU, as in production."""

pytestmark = pytest.mark.slow


def contract_raw(tmp: Path, backend: str) -> dict:
    from conftest import small_raw

    executor = {**EXECUTOR, "backend": backend}
    if backend == "ray":
        executor["ray"] = RAY
    return small_raw(tmp / "state", "builtin:digits", executor=executor)


RAY_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from executor_contract import run_contract
from eraserd.config import config_from_dict
from eraserd.executor import create_executor

if __name__ == "__main__":
    cfg = config_from_dict(json.loads(Path({raw!r}).read_text()))
    ex = create_executor(cfg, None)
    try:
        outcome = run_contract(ex)
    finally:
        ex.close()
    Path({out!r}).write_text(json.dumps(outcome))
"""


def ray_outcome(tmp: Path) -> dict:
    pytest.importorskip("ray")
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("Ray tests run in a private network namespace: needs root and unshare")
    raw, out, script = tmp / "raw.json", tmp / "outcome.json", tmp / "contract.py"
    raw.write_text(json.dumps(contract_raw(tmp, "ray")))
    script.write_text(
        textwrap.dedent(RAY_SCRIPT).format(tests=str(TESTS), raw=str(raw), out=str(out))
    )
    home = tmp / "home"
    home.mkdir()
    # Only loopback exists in the namespace, so Ray binds 127.0.0.1 and reaches nothing else.
    cmd = f"ip link set lo up && exec {sys.executable} {script}"
    env = {**os.environ, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = run_patiently(["unshare", "-n", "sh", "-c", cmd], env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module", params=BACKENDS)
def outcome(request, tmp_path_factory, lite0_32) -> dict:
    """What each scenario saw on one backend."""
    from eraserd.config import config_from_dict
    from eraserd.executor import create_executor

    backend = request.param
    tmp = tmp_path_factory.mktemp(f"contract-{backend}")
    if backend == "ray":
        return ray_outcome(tmp)
    ex = create_executor(config_from_dict(contract_raw(tmp, backend)), lite0_32)
    try:
        return run_contract(ex)
    finally:
        ex.close()


@pytest.fixture(scope="module")
def expected(tmp_path_factory, lite0_32) -> dict[str, str]:
    """The jobs' digests, trained directly, with no executor."""
    from eraserd.config import config_from_dict

    cfg = config_from_dict(contract_raw(tmp_path_factory.mktemp("reference"), "inline"))
    return reference(lite0_32, cfg)


def scenario(outcome: dict, name: str) -> dict:
    seen = outcome[name]
    assert "crashed" not in seen, seen.get("crashed")
    if "skip" in seen:
        pytest.skip(seen["skip"])
    return seen


def test_every_job_gets_its_result_the_same_bits_on_every_backend(outcome, expected):
    seen = scenario(outcome, "results")
    assert seen["digests"] == {k: expected[k] for k in ("ca", "cb", "cc")}
    assert seen["attempts"] == {"ca": 1, "cb": 1, "cc": 1}
    assert seen["on_done"] == ["ca", "cb", "cc"]


def test_a_worker_killed_mid_job_is_replaced_and_the_job_retried(outcome, expected):
    seen = scenario(outcome, "kill")
    assert seen["killed"] == 1
    assert seen["killed_is_gone"] is True
    assert seen["restarts"] >= 1
    assert seen["attempts"] == 2
    assert seen["digest"] == expected["clong"]  # the retry's result is the same bits


def test_a_job_over_its_timeout_is_stopped_retried_then_fails(outcome, expected):
    seen = scenario(outcome, "timeout")
    assert seen["error"] == "cluster cslow: retune failed 2 times; last error: timed out after 1 s"
    assert seen["replaced"] in (True, None)  # None: inline has no worker to replace
    assert seen["then"] == expected["cc"]  # the executor serves the next run


def test_a_job_that_keeps_failing_fails_the_run_with_a_clear_reason(outcome, expected):
    seen = scenario(outcome, "failing")
    assert seen["error"] == (
        "cluster cbad: retune failed 2 times; last error: ValueError: cannot train an empty cluster"
    )
    assert seen["then"] == expected["cc"]


def test_close_stops_every_worker_and_refuses_more_work(outcome):
    seen = scenario(outcome, "close")
    assert seen["alive_after_close"] == []
    assert seen["run_after_close"] == "the executor is closed"
    assert seen["workers_up"] == 0
