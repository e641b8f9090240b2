"""The test harness itself: a test process that dies, however it dies, leaves no daemon."""

from __future__ import annotations

import subprocess
import sys
import time
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
