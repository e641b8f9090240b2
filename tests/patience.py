"""Waiting that tells slowness from failure: a wait ends in failure only when the processes
doing the work stop making progress (no CPU time used for ``stall`` seconds), or at a
generous ``ceiling``. A machine several times slower makes a test slower, not red."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

STALL_S = 300.0
"""No CPU progress for this long is a hang, however busy the machine."""
CEILING_S = 3600.0
"""No wait lasts longer than this, progress or not."""
SAMPLE_S = 2.0


def die_with_parent() -> None:
    """``preexec_fn``: Linux SIGKILLs the child when the test process dies, however it dies
    (even a SIGKILLed or interrupted pytest, which runs no teardown, leaves no orphan)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stats() -> dict[int, list[str]]:
    """The fields after the command name of every process's ``/proc/PID/stat``."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            out[int(stat.parent.name)] = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
    return out


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    return sorted(p for p, fields in _stats().items() if int(fields[1]) == pid)


def tree_cpu_seconds(pid: int) -> float:
    """CPU time used so far by ``pid``, its live descendants and its reaped children."""
    stats = _stats()
    kids: dict[int, list[int]] = {}
    for p, fields in stats.items():
        kids.setdefault(int(fields[1]), []).append(p)
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        if p in stats:
            f = stats[p]
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        stack.extend(kids.get(p, []))
    return total / os.sysconf("SC_CLK_TCK")


class Patience:
    """Tracks the progress of one process tree for one wait."""

    def __init__(self, pid: int, stall: float = STALL_S, ceiling: float = CEILING_S):
        self.pid, self.stall, self.ceiling = pid, stall, ceiling
        self.start = self.last_progress = self.last_sample = time.monotonic()
        self.cpu = tree_cpu_seconds(pid)

    def expired(self) -> str | None:
        """Why the wait should give up now, or None to keep waiting."""
        now = time.monotonic()
        if now - self.last_sample >= SAMPLE_S:
            self.last_sample = now
            cpu = tree_cpu_seconds(self.pid)
            if cpu > self.cpu:
                self.cpu, self.last_progress = cpu, now
        if now - self.last_progress > self.stall:
            return f"no CPU progress for {now - self.last_progress:.0f} s"
        if now - self.start > self.ceiling:
            return f"still running after the {self.ceiling:.0f} s ceiling"
        return None


def run_patiently(
    cmd: list[str], stall: float = STALL_S, ceiling: float = CEILING_S, **kwargs
) -> subprocess.CompletedProcess:
    """``subprocess.run`` with output captured as text, but failing on a stall instead of a
    fixed timeout. The command runs in its own session, so a stalled or interrupted one is
    killed with all its children."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
        **kwargs,
    )
    try:
        patience = Patience(proc.pid, stall, ceiling)
        while True:
            try:
                out, err = proc.communicate(timeout=0.5)
                return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
            except subprocess.TimeoutExpired:
                why = patience.expired()
                if why is not None:
                    raise AssertionError(f"{cmd[0]}: {why}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
