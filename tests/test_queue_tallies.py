"""The queue stays fast as it grows: kept tallies that always equal a full count, distinct
samples counted once, compaction of finished requests, and query plans that never scan the
requests (so their cost does not grow with the queue). Real SQLite; no torch."""

from __future__ import annotations

import random
import sqlite3

import pytest

from eraserd.queue import PENDING, Queue, QueueView, RequestState
from eraserd.queue.schema import DERIVED, SCHEMA, statements

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`

SECRET = b"t" * 32
QUEUED = RequestState.QUEUED.value


@pytest.fixture
def q(tmp_path):
    queue = Queue(tmp_path / "queue.db", secret=SECRET)
    yield queue
    queue.close()


def admit(q: Queue, samples, subjects=(), matched=None, now=100.0, deadline=None):
    return q.admit(
        list(samples),
        list(subjects),
        matched=list(samples) if matched is None else matched,
        forgotten=[],
        deadline=deadline,
        default_deadline_s=3600.0,
        now=now,
    )


def scanned(path) -> dict:
    """What the tallies stand for, counted the slow way from the rows."""
    db = sqlite3.connect(path)
    try:
        by_state = dict(db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state"))
        queued_samples = db.execute(
            "SELECT COALESCE(SUM(new_samples), 0) FROM requests WHERE state = ?", (QUEUED,)
        ).fetchone()[0]
        pending = tuple(s.value for s in PENDING)
        marks = ",".join("?" * len(pending))
        distinct_pending = db.execute(
            f"SELECT COUNT(DISTINCT m.h) FROM members m JOIN requests r ON r.id = m.request_id "
            f"WHERE r.state IN ({marks})",
            pending,
        ).fetchone()[0]
        credited_pending = db.execute(
            f"SELECT COALESCE(SUM(new_samples), 0) FROM requests WHERE state IN ({marks})",
            pending,
        ).fetchone()[0]
        stray_members = db.execute(
            f"SELECT COUNT(*) FROM members m LEFT JOIN requests r ON r.id = m.request_id "
            f"WHERE r.state IS NULL OR r.state NOT IN ({marks})",
            pending,
        ).fetchone()[0]
    finally:
        db.close()
    return {
        "counts": {s.value: by_state.get(s.value, 0) for s in RequestState},
        "queued_samples": queued_samples,
        "distinct_pending": distinct_pending,
        "credited_pending": credited_pending,
        "stray_members": stray_members,
    }


def test_a_sample_named_by_several_pending_requests_counts_once(q, tmp_path):
    # 20 requests over 6 distinct samples; subjects expand to samples named elsewhere too.
    rng = random.Random(0)
    pool = [f"s{i}" for i in range(6)]
    for i in range(20):
        named = rng.sample(pool, 2)
        adm = admit(q, named, ["subj"] if i % 5 == 0 else [], matched=named + ["s0"] * (i % 5 == 0))
        assert adm.created
    assert q.pending().requests == 20 and q.pending().samples == 6
    view = QueueView(tmp_path / "queue.db")
    try:
        facts = view.facts(now=200.0, horizon_s=3600.0)
        assert (facts.pending_requests, facts.pending_samples, facts.recent_samples) == (20, 6, 6)
        bid = q.open_batch("size", now=150.0)
        assert q.batch(bid)["samples"] == 6
        # Named again while the first batch is pending: still nothing new.
        assert admit(q, ["s1"], now=160.0).pending.samples == 0
        q.mark_retuning(bid, 170.0)
        q.fail(bid, "deadline", 180.0)
        # The batch failed: its samples were not erased, so the queued request that named s1
        # inherits it, and naming s1 again adds nothing.
        assert q.pending().samples == 1
        assert admit(q, ["s1", "s2"], now=190.0).pending.samples == 2
        facts = view.facts(now=200.0, horizon_s=3600.0)
        assert facts.pending_samples == 2 and facts.recent_samples == 7
    finally:
        view.close()
    assert scanned(tmp_path / "queue.db")["stray_members"] == 0


def test_tallies_equal_a_full_count_through_every_transition(q, tmp_path):
    rng = random.Random(7)
    now = 1000.0
    batches: list[int] = []
    for step in range(300):
        now += rng.uniform(0.1, 20.0)
        op = rng.random()
        if op < 0.45:
            named = [f"s{rng.randrange(40)}" for _ in range(rng.randint(1, 3))]
            admit(q, named, now=now, deadline=now + rng.uniform(10, 400))
        elif op < 0.55:
            bid = q.open_batch("window", now)
            if bid is not None:
                batches.append(bid)
        elif batches:
            bid = rng.choice(batches)
            batch = q.batch(bid)  # None once compacted
            if batch is None or batch["state"] in ("published", "failed"):
                continue
            if op < 0.7:
                q.mark_retuning(bid, now)
            elif op < 0.8:
                q.mark_published(bid, step, 1, 1, 1.0, now)
            elif op < 0.88:
                q.mark_retry(bid, "OSError: disk full", now)
            elif op < 0.95:
                q.fail(bid, "deadline", now, expired_only=True)
            else:
                q.compact(now - 300.0)
        truth = scanned(tmp_path / "queue.db")
        assert q.counts() == truth["counts"], step
        assert q.pending().samples == truth["queued_samples"], step
        assert truth["stray_members"] == 0, step
        # Each distinct pending sample is credited to exactly one pending request.
        assert truth["credited_pending"] == truth["distinct_pending"], step
    assert sum(truth["counts"].values()) > 0 and truth["counts"]["published"] > 0


def test_compaction_deletes_old_finished_requests_and_keeps_the_rest(q, tmp_path):
    old = admit(q, ["a"], now=100.0).request
    bid = q.open_batch("window", 110.0)
    q.mark_retuning(bid, 110.0)
    q.mark_published(bid, 2, 1, 1, 1.0, 120.0)
    late = admit(q, ["b"], now=5000.0).request
    assert q.compact(before=4000.0) == 1
    assert q.get(old.id) is None and q.batch(bid) is None
    assert q.get(late.id).state == QUEUED
    assert q.counts()["published"] == 0 and q.counts()[QUEUED] == 1
    assert scanned(tmp_path / "queue.db")["counts"] == q.counts()
    assert q.compact(before=4000.0) == 0
    view = QueueView(tmp_path / "queue.db")
    try:  # the rate's history keeps its first submission; arrivals before the cut are gone
        facts = view.facts(now=5001.0, horizon_s=10_000.0)
        assert facts.first_submitted == 100.0 and facts.recent_samples == 1
    finally:
        view.close()


def test_a_queue_written_before_tallies_gets_them_on_open(tmp_path):
    path = tmp_path / "queue.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)  # the first release's tables: no new_samples, no tallies
    rows = [
        ("r1", "queued", 100.0, 3),
        ("r2", "queued", 101.0, 2),
        ("r3", "published", 50.0, 4),
        ("r4", "batched", 90.0, 1),
    ]
    for rid, state, created, samples in rows:
        db.execute(
            "INSERT INTO requests (id, payload, state, created_at, updated_at, deadline, "
            "samples, subjects) VALUES (?, 'p', ?, ?, ?, 9999, ?, 0)",
            (rid, state, created, created, samples),
        )
    db.executemany(
        "INSERT INTO items VALUES (?, 'sample', ?)", [("r1", "x"), ("r2", "x"), ("r4", "y")]
    )
    db.commit()
    db.close()
    q = Queue(path, secret=SECRET)
    try:
        assert q.counts() == {
            **{s.value: 0 for s in RequestState},
            "queued": 2,
            "published": 1,
            "batched": 1,
        }
        assert q.pending().samples == 5  # before, each request counted all its samples
        assert admit(q, ["x"], now=200.0).pending.samples == 5  # x is pending: not new
        assert admit(q, ["z"], now=201.0).pending.samples == 6
        assert scanned(path)["counts"] == q.counts()
    finally:
        q.close()
    Queue(path, secret=SECRET).close()  # a second open leaves the tallies alone
    q = Queue(path, secret=SECRET)
    try:
        assert q.counts()["queued"] == 4 and q.pending().samples == 6
    finally:
        q.close()


def plan(path, sql: str, args: tuple) -> str:
    db = sqlite3.connect(path)
    try:
        return " | ".join(r[-1] for r in db.execute("EXPLAIN QUERY PLAN " + sql, args))
    finally:
        db.close()


def test_what_submits_ticks_and_scrapes_read_never_scans_the_requests(q, tmp_path):
    """The reads whose cost must not grow with the queue use an index or a tally. Checked on
    SQLite's own query plans, which do not depend on how busy the machine is."""
    import inspect

    from eraserd.queue import db as dbmod
    from eraserd.queue import members, schema
    from eraserd.queue import view as viewmod

    path = tmp_path / "queue.db"
    source = inspect.getsource(dbmod.Queue.pending) + inspect.getsource(viewmod.QueueView.facts)
    source += inspect.getsource(dbmod.Queue.counts) + inspect.getsource(dbmod.Queue.admit)
    source += inspect.getsource(members.held) + inspect.getsource(schema)
    source += inspect.getsource(dbmod.Queue.pending_ids)
    reads = [
        ("SELECT requests, samples FROM tallies WHERE state = ?", (QUEUED,)),
        ("SELECT MIN(created_at) FROM requests WHERE state = ?", (QUEUED,)),
        ("SELECT MIN(deadline) FROM requests WHERE state = ?", (QUEUED,)),
        ("SELECT COUNT(*) FROM requests WHERE state = ? AND deadline < ?", (QUEUED, 1.0)),
        ("SELECT COALESCE(SUM(samples), 0) FROM arrivals WHERE second >= ?", (1,)),
        ("SELECT MAX(updated_at) FROM batches WHERE state = ?", ("published",)),
        ("SELECT 1 FROM members WHERE h = ? LIMIT 1", ("h",)),
        ("SELECT state, requests FROM tallies", ()),
    ]
    for sql, args in reads:
        assert sql.split(" FROM ")[0].split("(")[0] in source or "tallies" in sql
        p = plan(path, sql, args)
        assert "SCAN requests" not in p and "SCAN batches" not in p, (sql, p)
    # ...and the old way of counting would have scanned, so the check can fail.
    assert "SCAN" in plan(path, "SELECT state, COUNT(*) FROM requests GROUP BY state", ())


def test_derived_schema_statements_run_whole(tmp_path):
    stmts = statements(DERIVED)
    assert sum(s.startswith("CREATE TRIGGER") for s in stmts) == 3
    assert all(sqlite3.complete_statement(s) for s in stmts)
