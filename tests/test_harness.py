"""The test harness itself: a test process that dies, however it dies, leaves no daemon."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from inspect import getsource
from pathlib import Path

import pytest
from daemon_util import built_state, prebuilt_config

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
def test_a_killed_test_process_leaves_no_daemon(tmp_path, tmp_path_factory, digits_data, lite0_32):
    config = prebuilt_config(
        tmp_path, digits_data / "manifest.csv", lite0_32, built_state(tmp_path_factory)
    )
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from daemon_util import DaemonProc\n"
        f"d = DaemonProc(Path({str(config)!r}))\n"
        "d.wait_ready()\n"
        "print(d.proc.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)  # no teardown, no fixture, no atexit\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == -9, proc.stderr
    pid = int(proc.stdout.split()[0])
    end = time.monotonic() + 60
    while running(pid) and time.monotonic() < end:
        time.sleep(0.1)
    assert not running(pid), f"daemon {pid} outlived the test process that started it"


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan waits for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


FAILING = """
from pathlib import Path

from daemon_util import DaemonProc
from probe_util import running

PID_FILE = Path({pid_file!r})


def test_a_daemon_test_that_fails():
    d = DaemonProc(Path({config!r}))
    d.wait_ready()
    PID_FILE.write_text(str(d.proc.pid))
    assert False, "forced failure"


def test_the_next_test_finds_that_daemon_gone():
    assert not running(int(PID_FILE.read_text()))
"""
REAPER = ["-p", "conftest"]
"""Loads the suite's conftest as a plugin: its autouse fixtures are what reaps daemons."""


@pytest.mark.slow
def test_a_failing_daemon_test_leaves_no_daemon(tmp_path, tmp_path_factory, digits_data, lite0_32):
    """A daemon test that fails has its daemon killed at once, before the next test runs: the
    suite's autouse fixture reaps it, not the end of the process."""
    config = prebuilt_config(
        tmp_path, digits_data / "manifest.csv", lite0_32, built_state(tmp_path_factory)
    )
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "probe_util.py").write_text("from pathlib import Path\n\n\n" + getsource(running))
    pid_file = tmp_path / "daemon.pid"
    (inner / "test_inner.py").write_text(FAILING.format(config=str(config), pid_file=str(pid_file)))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *REAPER, "-p", "no:cacheprovider", "test_inner.py"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=inner,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(inner)])},
    )
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout + proc.stderr
    assert "forced failure" in proc.stdout
    assert not running(int(pid_file.read_text()))
