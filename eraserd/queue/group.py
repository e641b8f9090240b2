"""Group commit on the queue's one SQLite connection: submissions that arrive together share a
transaction and one fsync'd ``COMMIT``, and each is acknowledged only after that commit.

- A submission runs its statements in the open group transaction (``BEGIN IMMEDIATE`` by the
  first to join), inside its own ``SAVEPOINT``: a refused one undoes only itself.
- It then waits for the group's ``COMMIT``. The first to take the committer lock commits for
  every submission that has joined by then; the others find their group committed and return.
- The committer lingers (at most ``linger_s``) only while other submissions are already past
  their start and not yet done with their statements, so a lone client never waits.
- A failed ``COMMIT`` rolls the whole group back and fails every submission in it: none was
  acknowledged, so nothing acknowledged is lost.
- Every other transaction, and every read outside a submission, first commits the open group:
  nothing but the submissions themselves ever sees uncommitted rows.

``grouped=False`` commits each submission alone, before its lock is released: the same
protocol without the sharing, which ``benchmarks/scale.py --queue`` measures side by side.
"""

from __future__ import annotations

import copy
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..dbutil import immediate


class Group:
    """One shared transaction: ``done`` once committed or rolled back (``error`` then)."""

    __slots__ = ("done", "error", "members")

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None
        self.members = 0


class GroupCommit:
    def __init__(
        self,
        db: sqlite3.Connection,
        lock: threading.RLock,
        linger_s: float = 0.002,
        grouped: bool = True,
    ):
        self.db, self.lock, self.linger_s, self.grouped = db, lock, linger_s, grouped
        self._changed = threading.Condition(lock)  # a submission finished its statements
        self._committer = threading.Lock()
        self._group: Group | None = None
        self._arriving = 0  # submissions started and not yet done with their statements
        self._counter = threading.Lock()
        self._inside = False  # a submission's statements hold ``lock`` now

    def _arrive(self, step: int) -> None:
        with self._counter:
            self._arriving += step

    @contextmanager
    def submission(self) -> Iterator[Group]:
        """Run the caller's statements in the open group (opened if none is); yields the
        group, to pass to ``wait`` once the statements are done and the lock released."""
        self._arrive(1)
        try:
            with self.lock:
                if self._group is None:
                    self.db.execute("BEGIN IMMEDIATE")
                    self._group = Group()
                group = self._group
                self._inside = True
                self.db.execute("SAVEPOINT submission")
                try:
                    yield group
                except BaseException as exc:
                    if not self._undo(group):  # the group's transaction is gone
                        self._group = None
                        group.done = True
                        if group.members:  # their statements went with it
                            group.error = exc
                    raise
                finally:
                    self._inside = False
                self.db.execute("RELEASE submission")
                group.members += 1
                if not self.grouped:
                    self.settle()
        finally:
            self._arrive(-1)
            with self.lock:
                self._changed.notify_all()

    def _undo(self, group: Group) -> bool:
        """Undo a refused submission's statements; False if that ends the group's
        transaction (nobody else joined it, or SQLite rolled it back already)."""
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK TO submission")
                self.db.execute("RELEASE submission")
                if group.members:
                    return True
                self.db.execute("ROLLBACK")
        except sqlite3.Error:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        return False

    def wait(self, group: Group) -> None:
        """Return once ``group`` is committed (committing it, and any submission that joined
        it meanwhile, if nobody has); raise what its ``COMMIT`` raised if that failed."""
        with self._committer:
            if not group.done:
                with self.lock:
                    deadline = time.monotonic() + self.linger_s
                    while not group.done and self._arriving:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._changed.wait(left)
                    self.settle()
        if group.error is not None:
            raise copy.copy(group.error) from group.error

    def settle(self) -> None:
        """Commit the open group, if any; the caller holds ``lock``. A failed commit rolls
        the group back and is raised to its submissions, not to the caller."""
        group, self._group = self._group, None
        if group is None:
            return
        try:
            self.db.execute("COMMIT")
        except BaseException as exc:
            group.error = exc
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        finally:
            group.done = True

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """Any other write transaction: after the open group is committed."""
        with self.lock:
            assert not self._inside, "a write transaction inside a submission"
            self.settle()
            with immediate(self.db) as db:
                yield db

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads: committed rows only, except inside a submission,
        which reads its own group's."""
        with self.lock:
            if not self._inside:
                self.settle()
            yield self.db
