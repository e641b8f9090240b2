"""The durable deletion queue on real SQLite: state machine, idempotency, erasure of raw ids."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import threading
from pathlib import Path

import pytest

from eraserd.queue import (
    BatchState,
    DeletionRequest,
    IdempotencyConflict,
    Pending,
    Queue,
    RequestState,
)

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`

SECRET = b"k" * 32
QUEUED = RequestState.QUEUED.value
BATCHED = RequestState.BATCHED.value
RETUNING = RequestState.RETUNING.value
PUBLISHED = RequestState.PUBLISHED.value
FAILED = RequestState.FAILED.value


@pytest.fixture
def q(tmp_path):
    queue = Queue(tmp_path / "queue.db", secret=SECRET)
    yield queue
    queue.close()


def submit(
    q: Queue,
    samples: list[str],
    subjects: list[str] | None = None,
    *,
    now: float = 100.0,
    deadline: float = 1000.0,
    expanded: int | None = None,
    key: str | None = None,
    forgotten: list[str] | None = None,
) -> tuple[DeletionRequest, bool]:
    adm = q.admit(
        samples,
        subjects or [],
        # ``expanded``: that many distinct samples, as if subjects named them.
        matched=samples if expanded is None else [f"{samples}/{i}" for i in range(expanded)],
        forgotten=forgotten or [],
        deadline=deadline,
        default_deadline_s=3600.0,
        now=now,
        idempotency_key=key,
    )
    return adm.request, adm.created


def db_bytes(tmp_path: Path) -> bytes:
    """The database and its side files (-wal, -shm), concatenated."""
    files = sorted(p for p in tmp_path.iterdir() if p.name.startswith("queue.db"))
    assert files, "no queue.db files found"
    return b"".join(p.read_bytes() for p in files)


# ---- storage ------------------------------------------------------------------------------


def test_pragmas_wal_full_sync_secure_delete(q, tmp_path):
    assert q._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert q._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert q._db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    # WAL mode is persistent: visible from another connection
    other = sqlite3.connect(tmp_path / "queue.db")
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


def test_submit_queues_and_counts(q):
    submit(q, ["s0"], now=90.0)  # s0 is pending when the request below names it again
    req, created = submit(
        q,
        ["s0", "s1", "s8", "s9"],
        ["u1"],
        now=100.0,
        deadline=500.0,
        expanded=2,
        forgotten=["sample s8", "sample s9"],
    )
    assert created is True
    assert req.id.startswith("del_") and len(req.id) == 4 + 20
    assert req.state == QUEUED
    assert (req.created_at, req.updated_at, req.deadline) == (100.0, 100.0, 500.0)
    assert (req.samples, req.subjects) == (2, 1)
    assert (req.already_forgotten, req.already_pending) == (2, 1)
    assert (req.batch_id, req.version, req.attempts, req.reason, req.published_at) == (
        None,
        None,
        0,
        None,
        None,
    )
    assert q.get(req.id) == req
    assert q.get("del_missing") is None
    assert q.items(req.id) == (["s0", "s1"], ["u1"])  # forgotten ids are not queued
    assert q.counts() == {
        "received": 0,
        "queued": 2,
        "batched": 0,
        "retuning": 0,
        "published": 0,
        "failed": 0,
    }
    assert req.to_dict()["state"] == "queued"


def test_submission_survives_close_and_reopen(tmp_path):
    q1 = Queue(tmp_path / "queue.db", secret=SECRET)
    req, _ = submit(q1, ["s1", "s2"], ["u1"], now=100.0, deadline=500.0)
    q1.close()

    q2 = Queue(tmp_path / "queue.db", secret=SECRET)
    try:
        assert q2.get(req.id) == req
        assert q2.counts()["queued"] == 1
        assert q2.pending() == Pending(1, 2, 100.0, 500.0)
        bid = q2.open_batch("window", now=200.0)
        assert q2.batch_items(bid) == (["s1", "s2"], ["u1"])
    finally:
        q2.close()


# ---- idempotency --------------------------------------------------------------------------


def test_fingerprint_ignores_order_and_duplicates(q):
    assert q.fingerprint(["b", "a", "a"], ["y", "x"]) == q.fingerprint(["a", "b"], ["x", "y"])
    assert q.fingerprint(["a"], []) != q.fingerprint([], ["a"])
    other = Queue(q.path.parent / "other.db", secret=b"z" * 32)
    try:
        assert other.fingerprint(["a"], []) != q.fingerprint(["a"], [])  # keyed
    finally:
        other.close()


def test_same_key_same_body_returns_same_request(q):
    first, created = submit(q, ["s1", "s2"], key="retry-key-1", now=100.0)
    assert created is True
    again, created = submit(q, ["s2", "s1"], key="retry-key-1", now=150.0)
    assert created is False
    assert again == first
    assert again.created_at == 100.0
    assert q.lookup("retry-key-1", q.fingerprint(["s1", "s2"], [])) == first
    assert q.lookup("another-key", q.fingerprint(["s1", "s2"], [])) is None
    assert q.lookup(None, q.fingerprint(["s1", "s2"], [])) is None
    assert q.counts()["queued"] == 1


def test_without_key_every_submit_is_new(q):
    a, created_a = submit(q, ["s1"])
    b, created_b = submit(q, ["s1"])
    assert created_a and created_b
    assert a.id != b.id
    assert q.counts()["queued"] == 2


def test_same_key_different_body_conflicts(q):
    first, _ = submit(q, ["s1"], key="retry-key-2")
    with pytest.raises(IdempotencyConflict):
        submit(q, ["s1", "s9"], key="retry-key-2")
    with pytest.raises(IdempotencyConflict):
        q.lookup("retry-key-2", q.fingerprint(["s1", "s9"], []))
    # nothing was added, the original is untouched, and the queue still accepts work
    assert q.counts()["queued"] == 1
    assert q.get(first.id) == first
    _, created = submit(q, ["s9"], key="retry-key-3")
    assert created is True
    assert q.counts()["queued"] == 2


def test_idempotency_key_not_stored_in_clear(q, tmp_path):
    key = "client-idem-key-7f3a9c"
    submit(q, ["s1"], key=key)
    q.scrub()
    raw = db_bytes(tmp_path)
    assert key.encode() not in raw
    # sanity: the bytes read are the real store (the keyed hash of the key is in it)
    keyed = hmac.new(SECRET, ("idem:" + key).encode(), hashlib.sha256).hexdigest()
    assert keyed.encode() in raw
    assert b"s1" in raw


def test_nothing_left_to_forget_is_published_at_once(q):
    gone = ["f1", "f2", "f3"]
    req, created = submit(
        q, gone, [], now=123.0, expanded=0, forgotten=[f"sample {i}" for i in gone]
    )
    assert created is True
    assert req.state == PUBLISHED
    assert req.published_at == 123.0
    assert req.already_forgotten == 3
    assert req.batch_id is None and req.version is None
    assert q.counts()["published"] == 1 and q.counts()["queued"] == 0
    assert q.pending() == Pending(0, 0, None, None)
    assert q.open_batch("window", now=200.0) is None


# ---- pending ------------------------------------------------------------------------------


def test_pending_ids_only_counts_pending_states(q):
    submit(q, ["s-retuning"])
    b1 = q.open_batch("window", now=110.0)
    q.mark_retuning(b1, now=111.0)
    submit(q, ["s-batched"], ["u-batched"])
    q.open_batch("window", now=120.0)
    submit(q, ["s-published"], ["u-published"])
    b3 = q.open_batch("window", now=130.0)
    q.mark_published(b3, version=2, affected=1, retrained=1, seconds=1.0, now=131.0)
    submit(q, ["s-queued"], ["u-queued"])

    samples, subjects = q.pending_ids(
        ["s-queued", "s-batched", "s-retuning", "s-published", "s-unknown"],
        ["u-queued", "u-batched", "u-published", "s-queued"],
    )
    assert samples == {"s-queued", "s-batched", "s-retuning"}
    # kinds are kept apart: a subject query does not match a sample id
    assert subjects == {"u-queued", "u-batched"}
    assert q.pending_ids([], []) == (set(), set())


def test_pending_ids_ignores_failed_requests(q):
    submit(q, ["s-failed"])
    bid = q.open_batch("window", now=110.0)
    q.mark_retuning(bid, now=111.0)
    assert q.fail(bid, "boom", now=112.0) == 1
    assert q.pending_ids(["s-failed"], []) == (set(), set())


def test_pending_summarises_queued_requests_only(q):
    assert q.pending() == Pending(0, 0, None, None)
    submit(q, ["c"], now=10.0, deadline=20.0, expanded=7)
    assert q.open_batch("window", now=30.0) is not None  # batched: no longer counted
    submit(q, ["a"], now=100.0, deadline=500.0, expanded=3)
    submit(q, ["b"], now=50.0, deadline=900.0, expanded=2)
    assert q.pending() == Pending(
        requests=2, samples=5, oldest_created=50.0, earliest_deadline=500.0
    )


# ---- batches ------------------------------------------------------------------------------


def test_open_batch_moves_every_queued_request(q):
    assert q.open_batch("window", now=1.0) is None
    r1, _ = submit(q, ["b", "a"], ["x"], expanded=4)
    r2, _ = submit(q, ["a", "c"], ["x", "w"], expanded=3)
    bid = q.open_batch("size", now=200.0)
    assert isinstance(bid, int)
    for rid in (r1.id, r2.id):
        req = q.get(rid)
        assert (req.state, req.batch_id, req.updated_at) == (BATCHED, bid, 200.0)
    assert q.counts()["queued"] == 0 and q.counts()["batched"] == 2
    assert q.pending() == Pending(0, 0, None, None)

    batch = q.batch(bid)
    assert batch["id"] == bid
    assert batch["state"] == BatchState.BATCHED.value
    assert batch["reason"] == "size"
    assert batch["samples"] == 7
    assert (batch["created_at"], batch["attempts"], batch["version"]) == (200.0, 0, None)
    assert q.batch(bid + 100) is None

    # a request queued later is not in the batch
    submit(q, ["z-later"], ["z-later-subject"])
    assert q.batch_items(bid) == (["a", "b", "c"], ["w", "x"])
    assert q.open_batch("window", now=300.0) == bid + 1
    assert q.open_batch("window", now=301.0) is None


def test_mark_retuning_counts_attempts(q):
    r, _ = submit(q, ["s1"])
    bid = q.open_batch("window", now=110.0)
    q.mark_retuning(bid, now=120.0)
    batch = q.batch(bid)
    assert (batch["state"], batch["attempts"], batch["updated_at"]) == (RETUNING, 1, 120.0)
    req = q.get(r.id)
    assert (req.state, req.attempts, req.updated_at) == (RETUNING, 1, 120.0)
    q.mark_retuning(bid, now=130.0)  # resumed after a restart
    assert q.batch(bid)["attempts"] == 2
    assert q.get(r.id).attempts == 2
    assert q.counts()["retuning"] == 1


def test_mark_published_records_version_and_erases_raw_ids(q, tmp_path):
    secret_ids = ["sample-zq7-alpha-0001", "sample-zq7-bravo-0002"]
    secret_subject = "subject-zq7-charlie-03"
    kept = "sample-kept-delta-0004"
    r, _ = submit(q, secret_ids, [secret_subject], now=100.0)
    bid = q.open_batch("window", now=110.0)
    q.mark_retuning(bid, now=111.0)
    other, _ = submit(q, [kept], now=112.0)  # queued after the batch: must survive

    before = db_bytes(tmp_path)
    for ident in [*secret_ids, secret_subject, kept]:
        assert ident.encode() in before  # sanity: the check below can fail

    q.mark_published(bid, version=5, affected=2, retrained=1, seconds=3.5, now=120.0)

    req = q.get(r.id)
    assert (req.state, req.version, req.published_at, req.reason) == (PUBLISHED, 5, 120.0, None)
    assert req.batch_id == bid
    assert (req.samples, req.subjects) == (2, 1)  # counts stay
    batch = q.batch(bid)
    assert batch["state"] == BatchState.PUBLISHED.value
    assert (batch["version"], batch["affected"], batch["retrained"]) == (5, 2, 1)
    assert (batch["seconds"], batch["updated_at"], batch["error"]) == (3.5, 120.0, None)
    assert q.batch_items(bid) == ([], [])

    after = db_bytes(tmp_path)
    for ident in [*secret_ids, secret_subject]:
        assert ident.encode() not in after, ident
    assert (tmp_path / "queue.db-wal").stat().st_size == 0  # WAL truncated

    # the unrelated queued request keeps its ids
    assert kept.encode() in after
    assert q.get(other.id).state == QUEUED
    assert q.pending_ids([kept], []) == ({kept}, set())


def test_a_failed_attempt_keeps_the_batch_together_for_its_retry(q):
    r1, _ = submit(q, ["s1"])
    r2, _ = submit(q, ["s2"], ["u2"])
    bid = q.open_batch("window", now=110.0)
    assert q.mark_retuning(bid, now=111.0) == 1

    q.mark_retry(bid, "RuntimeError: oom", now=112.0)
    batch = q.batch(bid)
    assert (batch["state"], batch["error"], batch["attempts"]) == (
        BatchState.BATCHED.value,
        "RuntimeError: oom",
        1,
    )
    for rid in (r1.id, r2.id):
        req = q.get(rid)
        assert (req.state, req.batch_id, req.reason) == (BATCHED, bid, "RuntimeError: oom")
        assert (req.attempts, req.updated_at) == (1, 112.0)
    assert q.unfinished_batches() == [bid]
    # A newer request waits for the next batch; the retried one keeps its own members.
    r3, _ = submit(q, ["s3"], now=113.0)
    assert q.pending() == Pending(1, 1, 113.0, 1000.0)
    assert q.batch_items(bid) == (["s1", "s2"], ["u2"])
    assert q.mark_retuning(bid, now=120.0) == 2
    assert q.get(r3.id).state == QUEUED


def test_attempts_never_fail_a_request(q, tmp_path):
    r, _ = submit(q, ["s-kept"])
    bid = q.open_batch("window", now=200.0)
    for i in range(50):  # crashes, dead workers, a full disk: all retried
        assert q.mark_retuning(bid, now=201.0 + i) == i + 1
        q.mark_retry(bid, f"error {i}", now=201.5 + i)
    req = q.get(r.id)
    assert (req.state, req.attempts, req.reason) == (BATCHED, 50, "error 49")
    assert q.counts()["failed"] == 0
    assert b"s-kept" in db_bytes(tmp_path)  # still needed: the request is still to be done


def test_fail_closes_only_the_requests_past_their_deadline(q, tmp_path):
    late, _ = submit(q, ["s-late"], deadline=150.0)
    ontime, _ = submit(q, ["s-ontime"], deadline=1000.0)
    bid = q.open_batch("window", now=110.0)
    q.mark_retuning(bid, now=111.0)
    q.mark_retry(bid, "OSError: disk full", now=112.0)

    assert q.fail(bid, "deadline passed", now=149.0, expired_only=True) == 0
    assert q.fail(bid, "deadline passed", now=200.0, expired_only=True) == 1
    assert (q.get(late.id).state, q.get(late.id).reason) == (FAILED, "deadline passed")
    assert q.get(ontime.id).state == BATCHED
    assert q.unfinished_batches() == [bid]
    assert q.batch_items(bid) == (["s-ontime"], [])
    blob = db_bytes(tmp_path)
    assert b"s-late" not in blob and b"s-ontime" in blob

    # Publishing the batch publishes what is left of it, never the failed request.
    q.mark_published(bid, version=3, affected=1, retrained=1, seconds=1.0, now=210.0)
    assert q.get(late.id).state == FAILED and q.get(late.id).published_at is None
    assert (q.get(ontime.id).state, q.get(ontime.id).version) == (PUBLISHED, 3)


def test_fail_closes_the_whole_batch(q, tmp_path):
    r1, _ = submit(q, ["s1"], deadline=150.0)
    r2, _ = submit(q, ["s2"], deadline=1000.0)
    bid = q.open_batch("window", now=110.0)
    q.mark_retuning(bid, now=111.0)
    assert q.fail(bid, "DataError: refusing to forget every training sample", now=112.0) == 2
    assert {q.get(r.id).state for r in (r1, r2)} == {FAILED}
    batch = q.batch(bid)
    assert batch["state"] == BatchState.FAILED.value
    assert batch["error"].startswith("DataError")
    assert q.unfinished_batches() == []
    assert q.counts()["failed"] == 2
    blob = db_bytes(tmp_path)
    assert b"s1" not in blob and b"s2" not in blob


def test_unfinished_and_last_batch(q):
    assert q.unfinished_batches() == []
    assert q.last_batch() is None
    submit(q, ["s1"])
    b1 = q.open_batch("window", now=110.0)
    q.mark_retuning(b1, now=111.0)
    submit(q, ["s2"])
    b2 = q.open_batch("size", now=120.0)
    submit(q, ["s3"])
    b3 = q.open_batch("deadline", now=130.0)
    q.mark_published(b3, version=9, affected=1, retrained=1, seconds=0.5, now=131.0)
    submit(q, ["s4"])
    b4 = q.open_batch("manual", now=140.0)
    q.mark_retuning(b4, now=141.0)
    q.fail(b4, "boom", now=142.0)

    assert b1 < b2 < b3 < b4
    assert q.unfinished_batches() == [b1, b2]
    last = q.last_batch()
    assert (last["id"], last["state"], last["reason"], last["error"]) == (
        b4,
        BatchState.FAILED.value,
        "manual",
        "boom",
    )
    submit(q, ["s5"])
    b5 = q.open_batch("window", now=150.0)
    q.mark_published(b5, version=10, affected=0, retrained=0, seconds=0.1, now=151.0)
    assert q.last_batch()["id"] == b5
    assert q.last_batch()["version"] == 10
    assert q.unfinished_batches() == [b1, b2]


# ---- concurrency --------------------------------------------------------------------------


def test_concurrent_submits_through_one_queue(q):
    threads_n, per_thread = 4, 25
    ids: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def worker(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                req, created = submit(q, [f"t{t}-s{i}"], now=float(i), key=f"t{t}-k{i}")
                assert created
                ids.append(req.id)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads)
    assert errors == []
    assert len(ids) == 100
    assert len(set(ids)) == 100
    assert q.counts()["queued"] == 100
    assert q.pending().samples == 100
    assert all(q.get(rid).state == QUEUED for rid in ids)


# ---- admission ----------------------------------------------------------------------------


def admit(q: Queue, samples, subjects=(), **kw):
    args = {
        "matched": list(samples),
        "forgotten": [],
        "deadline": None,
        "default_deadline_s": 3600.0,
        "now": 100.0,
        **kw,
    }
    return q.admit(list(samples), list(subjects), **args)


def test_admit_queues_in_one_step_and_reports_what_was_already_pending(q):
    first = admit(q, ["a", "b"], ["u"])
    assert first.created and first.request.state == QUEUED
    assert first.request.deadline == 100.0 + 3600.0  # the default deadline
    assert first.pending == Pending(1, 2, 100.0, 3700.0)
    second = admit(
        q,
        ["b", "c", "d"],
        ["u"],
        matched=["b", "c"],  # d is erased already: the store no longer has it
        forgotten=["sample d"],
        now=110.0,
        deadline=500.0,
    )
    assert second.created and second.already_pending == ("sample b", "subject u")
    assert q.items(second.request.id) == (["b", "c"], ["u"])  # a forgotten id is not queued
    assert second.request.to_dict()["already_forgotten"] == 1
    assert second.request.already_pending == 2
    assert second.pending == Pending(2, 3, 100.0, 500.0)  # b is pending already: counted once


def test_admit_answers_a_retry_with_the_first_request_even_past_its_deadline(q):
    first = admit(q, ["a"], idempotency_key="k1", deadline=150.0)
    again = admit(q, ["a"], idempotency_key="k1", deadline=150.0, now=200.0)
    assert not again.created and again.request == first.request
    assert q.counts()[QUEUED] == 1
    with pytest.raises(IdempotencyConflict):
        admit(q, ["b"], idempotency_key="k1")


def test_admit_refuses_a_past_deadline_and_writes_nothing(q):
    with pytest.raises(ValueError, match="deadline is in the past"):
        admit(q, ["a"], deadline=100.0, idempotency_key="k2")
    assert q.counts()[QUEUED] == 0
    assert admit(q, ["a"], idempotency_key="k2").created  # the key was not taken
