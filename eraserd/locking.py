"""One writer per state dir: an exclusive ``flock`` held for the life of the process."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import IN_USE, EraserdError
from .fsutil import private_dir


class StateLocked(EraserdError):
    exit_code = IN_USE


class StateLock:
    def __init__(self, state_dir: Path, what: str):
        self.path = Path(state_dir) / "eraserd.lock"
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StateLocked(
                f"{self.path.parent} is in use by {holder}; stop it first "
                "(one eraserd per state_dir)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.what} (pid {os.getpid()})".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
