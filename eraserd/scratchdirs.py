"""Scratch directories that hold copies of private data (``eraserd verify``'s rebuild,
``eraserd evaluate``'s states), and the sweep of those their process left behind.

Each is created with an ``owner`` file naming its process (pid and, on Linux, the process's
start time, so that a reused pid is not taken for the owner). A process that ends normally
deletes its directory; one killed by SIGKILL or a power loss cannot. ``sweep_stale`` deletes
every directory whose owner is gone, so a copy does not outlive the process that needed it,
nor keep a deleted sample on disk. A directory without an owner file, another user's, or one
whose owner still runs is left alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

OWNER = "owner"
VERIFY = ".verify-"
"""``eraserd verify``'s rebuilds, inside the state dir."""
EVALUATE = "eraserd-evaluate-"
"""``eraserd evaluate``'s scratch states, under ``--scratch`` or the system's temp dir."""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), or
    "" where there is no ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def make_owned(root: Path, prefix: str) -> Path:
    """A new private directory under ``root`` (mode 0700), owned by this process."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    pid = os.getpid()
    (path / OWNER).write_text(f"{pid} {_start_time(pid)}\n")
    return path


def _owner_alive(path: Path) -> bool | None:
    """Whether the directory's owner still runs; None if it names none."""
    try:
        fields = (path / OWNER).read_text().split()
        pid, start = int(fields[0]), fields[1] if len(fields) > 1 else ""
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process of that pid: it runs
        pass
    now = _start_time(pid)
    return not (start and now and now != start)


def sweep_stale(root: Path, prefix: str) -> list[Path]:
    """Delete the directories ``prefix*`` under ``root`` whose owner process is gone; the
    ones deleted."""
    removed: list[Path] = []
    try:
        candidates = sorted(root.glob(f"{prefix}*"))
    except OSError:
        return removed
    for path in candidates:
        try:
            mine = path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.geteuid()
        except OSError:
            continue
        if mine and _owner_alive(path) is False:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
