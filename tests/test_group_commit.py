"""Group commit (``eraserd/queue/group.py``) on a real SQLite file: submissions that arrive
together share one ``COMMIT``, none is acknowledged before its commit, a refused one undoes
only itself, and a failed ``COMMIT`` fails every submission of its group."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from eraserd.queue import Queue
from eraserd.queue.group import GroupCommit

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`


def open_db(path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    db.executescript(
        "CREATE TABLE IF NOT EXISTS parent (id INTEGER PRIMARY KEY);"
        "CREATE TABLE IF NOT EXISTS child (parent INTEGER "
        "REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);"
    )
    return db


def committed(path, table: str = "parent") -> list[int]:
    """The rows another connection sees: committed ones only."""
    other = sqlite3.connect(path)
    try:
        return [r[0] for r in other.execute(f"SELECT * FROM {table} ORDER BY 1")]
    finally:
        other.close()


@pytest.fixture
def gc(tmp_path):
    path = tmp_path / "g.db"
    db = open_db(path)
    yield GroupCommit(db, threading.RLock()), path
    db.close()


def test_submissions_in_one_group_commit_together(gc):
    commits, path = gc
    with commits.submission() as first:
        commits.db.execute("INSERT INTO parent VALUES (1)")
    with commits.submission() as second:  # joins the open group
        commits.db.execute("INSERT INTO parent VALUES (2)")
    assert first is second and not first.done
    assert committed(path) == []  # nothing acknowledged, nothing visible
    commits.wait(first)
    assert first.done and first.error is None and committed(path) == [1, 2]
    commits.wait(second)  # already committed: returns at once
    assert not commits.db.in_transaction


def test_a_refused_submission_undoes_only_itself(gc):
    commits, path = gc
    with commits.submission() as kept:
        commits.db.execute("INSERT INTO parent VALUES (1)")
    with pytest.raises(ValueError, match="refused"), commits.submission():
        commits.db.execute("INSERT INTO parent VALUES (2)")
        raise ValueError("refused")
    commits.wait(kept)
    assert committed(path) == [1]


def test_a_lone_refused_submission_leaves_no_transaction_open(gc):
    commits, path = gc
    with pytest.raises(ValueError), commits.submission():
        commits.db.execute("INSERT INTO parent VALUES (7)")
        raise ValueError("refused")
    assert not commits.db.in_transaction
    with commits.write() as db:  # a later write transaction starts cleanly
        db.execute("INSERT INTO parent VALUES (8)")
    assert committed(path) == [8]


def test_a_failed_commit_fails_every_submission_of_its_group(gc):
    commits, path = gc
    with commits.submission() as good:
        commits.db.execute("INSERT INTO parent VALUES (1)")
    with commits.submission() as bad:  # a deferred constraint: only COMMIT can fail it
        commits.db.execute("INSERT INTO child VALUES (99)")
    for group in (good, bad):
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            commits.wait(group)
    assert committed(path) == [] and committed(path, "child") == []
    assert not commits.db.in_transaction
    with commits.submission() as later:  # the next group is unaffected
        commits.db.execute("INSERT INTO parent VALUES (3)")
    commits.wait(later)
    assert committed(path) == [3]


def test_ungrouped_commits_each_submission_before_releasing_the_lock(tmp_path):
    db = open_db(tmp_path / "g.db")
    commits = GroupCommit(db, threading.RLock(), grouped=False)
    with commits.submission() as first:
        db.execute("INSERT INTO parent VALUES (1)")
    assert first.done and committed(tmp_path / "g.db") == [1]
    with commits.submission() as second:
        db.execute("INSERT INTO parent VALUES (2)")
    assert second is not first
    commits.wait(second)
    assert committed(tmp_path / "g.db") == [1, 2]
    db.close()


def test_reads_and_other_writes_commit_the_open_group_first(gc):
    commits, path = gc
    with commits.submission() as group:
        commits.db.execute("INSERT INTO parent VALUES (1)")
    with commits.read() as db:
        assert db.execute("SELECT COUNT(*) FROM parent").fetchone() == (1,)
    assert group.done and committed(path) == [1]
    with commits.submission() as group:
        commits.db.execute("INSERT INTO parent VALUES (2)")
    with commits.write() as db:
        db.execute("INSERT INTO parent VALUES (3)")
    assert group.done and committed(path) == [1, 2, 3]


def test_concurrent_admissions_share_commits_and_are_durable_at_their_ack(tmp_path):
    """Queue.admit from 8 threads at once: every request is visible to another connection
    (committed) when its admit returns, and the 160 admissions took fewer COMMITs."""
    path = tmp_path / "queue.db"
    q = Queue(path, b"k" * 32)
    commits = []
    q._db.set_trace_callback(lambda sql: commits.append(1) if sql == "COMMIT" else None)
    threads, each = 8, 20
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def submit(k: int) -> None:
        start.wait()
        other = sqlite3.connect(path)
        try:
            for i in range(each):
                sid = f"t{k}-{i}"
                adm = q.admit(
                    [sid],
                    [],
                    matched=[sid],
                    forgotten=[],
                    deadline=None,
                    default_deadline_s=3600.0,
                    now=time.time(),
                )
                seen = other.execute(
                    "SELECT state FROM requests WHERE id = ?", (adm.request.id,)
                ).fetchone()
                assert seen == ("queued",), f"{adm.request.id} acknowledged before its commit"
        except BaseException as exc:
            errors.append(exc)
        finally:
            other.close()

    pool = [threading.Thread(target=submit, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=300)
    q._db.set_trace_callback(None)
    assert not errors, errors[0]
    assert q.counts()["queued"] == threads * each
    assert q.pending().samples == threads * each
    assert 0 < len(commits) < threads * each, f"{len(commits)} commits"
    q.close()
