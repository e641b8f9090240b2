"""``Queue``: the durable deletion queue on SQLite (see the package docstring)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from ..faults import crashpoint
from . import members as ledger
from .group import GroupCommit
from .records import (
    _REQUEST_COLS,
    PENDING,
    Admission,
    BatchState,
    DeletionRequest,
    IdempotencyConflict,
    Page,
    Pending,
    Position,
    RequestState,
)
from .schema import SCHEMA, upgrade

log = logging.getLogger("eraserd.queue")


class Queue:
    def __init__(self, path: Path, secret: bytes, group_commit: bool = True):
        self.path = Path(path)
        self._secret = secret
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")
        # 16 MiB of pages (2 MiB by default): at 100k pending requests, the index pages a
        # submission looks up and writes stay in memory instead of being read again.
        self._db.execute("PRAGMA cache_size=-16384")
        self._db.executescript(SCHEMA)
        self._commits = GroupCommit(self._db, self._lock, grouped=group_commit)
        with self._tx() as db:
            upgrade(db, self._member)
        self.scrub()  # a crash may have left erased rows in the WAL

    def close(self) -> None:
        with self._lock:
            self._commits.settle()
            self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction (after the open group of submissions is committed)."""
        return self._commits.write()

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        """The connection for reads: committed rows (a submission also sees its own)."""
        return self._commits.read()

    def _hash(self, text: str) -> str:
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()

    def _member(self, sample_id: str) -> str:
        return self._hash("member:" + sample_id)

    # ---- submissions ----------------------------------------------------------------------

    def fingerprint(self, samples: list[str], subjects: list[str]) -> str:
        """Keyed hash of a request body as submitted, to match idempotent retries."""
        return self._hash(json.dumps([sorted(set(samples)), sorted(set(subjects))]))

    def lookup(self, idempotency_key: str | None, payload: str) -> DeletionRequest | None:
        """The request an idempotency key already made, if any (same body required)."""
        if not idempotency_key:
            return None
        with self._read():
            row = self._db.execute(
                "SELECT id, payload FROM requests WHERE idem = ?",
                (self._hash("idem:" + idempotency_key),),
            ).fetchone()
            if row is None:
                return None
            if row[1] != payload:
                raise IdempotencyConflict("idempotency key already used for a different request")
            return self._get(row[0])

    def admit(
        self,
        sample_ids: list[str],
        subject_ids: list[str],
        *,
        matched: Sequence[str],
        forgotten: list[str],
        deadline: float | None,
        default_deadline_s: float,
        now: float,
        idempotency_key: str | None = None,
    ) -> Admission:
        """Queue a submission: an idempotent retry gets the request its key made; else the
        deadline is checked, the ids already pending are noted, and the request is committed
        (durable before this returns; concurrent submissions share one commit, see
        ``group.py``). ``matched`` (the live samples the ids name, subjects expanded) and
        ``forgotten`` (``sample X``/``subject Y`` already erased) come from the store. The
        request adds to the pending samples only those of ``matched`` that no pending
        request names yet."""
        payload = self.fingerprint(sample_ids, subject_ids)
        gone = set(forgotten)
        samples = sorted({s for s in sample_ids if f"sample {s}" not in gone})
        subjects = sorted({s for s in subject_ids if f"subject {s}" not in gone})
        with self._commits.submission() as group:
            existing = self.lookup(idempotency_key, payload)
            if existing is not None:
                admission = Admission(existing, False)
            else:
                if deadline is not None and deadline <= now:
                    raise ValueError("deadline is in the past")
                pend_s, pend_subj = self.pending_ids(samples, subjects)
                already = tuple(f"sample {s}" for s in sorted(pend_s)) + tuple(
                    f"subject {s}" for s in sorted(pend_subj)
                )
                members = sorted({self._member(s) for s in matched})
                known = ledger.held(self._db, members)
                crashpoint("submit")
                req = self._insert(
                    samples,
                    subjects,
                    members,
                    known,
                    deadline if deadline is not None else now + default_deadline_s,
                    now,
                    payload,
                    idempotency_key,
                    len(forgotten),
                    len(already),
                )
                admission = Admission(req, True, already, self.pending())
        self._commits.wait(group)  # an idempotent retry too: its request may share this group
        return admission

    def _insert(
        self,
        samples: list[str],
        subjects: list[str],
        members: list[str],
        held: set[str],
        deadline: float,
        now: float,
        payload: str,
        idempotency_key: str | None,
        already_forgotten: int,
        already_pending: int,
    ) -> DeletionRequest:
        """Insert a request, its items and its member hashes (``members``, those in ``held``
        already named by a pending request); inside the caller's transaction."""
        idem = self._hash("idem:" + idempotency_key) if idempotency_key else None
        db = self._db
        rid = "del_" + secrets.token_hex(10)
        state = RequestState.QUEUED if samples or subjects else RequestState.PUBLISHED
        db.execute(
            "INSERT INTO requests (id, idem, payload, state, created_at, updated_at, "
            "deadline, samples, subjects, already_forgotten, already_pending, published_at, "
            "new_samples) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rid,
                idem,
                payload,
                state.value,
                now,
                now,
                deadline,
                len(members),
                len(subjects),
                already_forgotten,
                already_pending,
                now if state is RequestState.PUBLISHED else None,
                len(members) - len(held) if state is RequestState.QUEUED else 0,
            ),
        )
        db.executemany(
            "INSERT INTO items VALUES (?, ?, ?)",
            [(rid, "sample", s) for s in samples] + [(rid, "subject", s) for s in subjects],
        )
        if state is RequestState.QUEUED:
            ledger.add(db, rid, members, held)
        created = self._get(rid)
        assert created is not None
        return created

    def pending_ids(self, samples: list[str], subjects: list[str]) -> tuple[set, set]:
        """Which of these ids are already named by a pending request."""
        states = tuple(s.value for s in PENDING)
        marks = ",".join("?" * len(states))
        found: dict[str, set] = {"sample": set(), "subject": set()}
        with self._read():
            for kind, idents in (("sample", samples), ("subject", subjects)):
                for ident in idents:
                    hit = self._db.execute(
                        f"SELECT 1 FROM items i JOIN requests r ON r.id = i.request_id "
                        f"WHERE i.kind = ? AND i.ident = ? AND r.state IN ({marks}) LIMIT 1",
                        (kind, ident, *states),
                    ).fetchone()
                    if hit:
                        found[kind].add(ident)
        return found["sample"], found["subject"]

    def _get(self, rid: str) -> DeletionRequest | None:
        row = self._db.execute(
            f"SELECT {_REQUEST_COLS} FROM requests WHERE id = ?", (rid,)
        ).fetchone()
        return DeletionRequest(*row) if row else None

    def get(self, rid: str) -> DeletionRequest | None:
        with self._read():
            return self._get(rid)

    def items(self, rid: str) -> tuple[list[str], list[str]]:
        """A request's own sample and subject ids: empty once it is published or failed."""
        with self._read():
            rows = self._db.execute(
                "SELECT kind, ident FROM items WHERE request_id = ? ORDER BY kind, ident", (rid,)
            ).fetchall()
        return [i for k, i in rows if k == "sample"], [i for k, i in rows if k == "subject"]

    def page(self, state: str | None, limit: int, after: Position | None = None) -> Page:
        """Up to ``limit`` requests, of one ``state`` or all, newest first ((created_at, id)
        descending), from just after ``after``. Keyset paging on an index: a page reads its
        own rows only, and requests submitted meanwhile never shift the later pages."""
        where: list[str] = []
        args: list[object] = []
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if after is not None:
            where.append("(created_at, id) < (?, ?)")
            args.extend(after)
        sql = (
            f"SELECT {_REQUEST_COLS} FROM requests"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY created_at DESC, id DESC LIMIT ?"
        )
        with self._read():
            rows = self._db.execute(sql, (*args, limit + 1)).fetchall()
        found = [DeletionRequest(*r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(found, (found[-1].created_at, found[-1].id) if more else None)

    def pending(self) -> Pending:
        """The queued requests' totals: kept tallies and two index lookups, no scan."""
        queued = RequestState.QUEUED.value
        with self._read():
            n, samples = self._db.execute(
                "SELECT requests, samples FROM tallies WHERE state = ?", (queued,)
            ).fetchone()
            (oldest,) = self._db.execute(
                "SELECT MIN(created_at) FROM requests WHERE state = ?", (queued,)
            ).fetchone()
            (earliest,) = self._db.execute(
                "SELECT MIN(deadline) FROM requests WHERE state = ?", (queued,)
            ).fetchone()
        return Pending(n, samples, oldest, earliest)

    def counts(self) -> dict[str, int]:
        """Requests held, by state (published and failed ones until ``compact``)."""
        with self._read():
            rows = self._db.execute("SELECT state, requests FROM tallies").fetchall()
        out = {s.value: 0 for s in RequestState}
        out.update(dict(rows))
        return out

    def compact(self, before: float) -> int:
        """Delete published and failed requests last changed before ``before``, batches
        left without requests, and arrivals older than that. Their raw ids are gone already;
        their certificates stay in the audit log. Returns how many requests were deleted."""
        done = (RequestState.PUBLISHED.value, RequestState.FAILED.value)
        with self._tx() as db:
            deleted = 0
            for state in done:  # one index range each: requests_state_updated
                deleted += db.execute(
                    "DELETE FROM requests WHERE state = ? AND updated_at < ?", (state, before)
                ).rowcount
            db.execute(
                "DELETE FROM batches WHERE state IN (?, ?) AND updated_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM requests r WHERE r.batch_id = batches.id)",
                (BatchState.PUBLISHED.value, BatchState.FAILED.value, before),
            )
            db.execute("DELETE FROM arrivals WHERE second < ?", (int(before),))
        if deleted:
            self.scrub()
        return deleted

    # ---- batches --------------------------------------------------------------------------

    def open_batch(self, reason: str, now: float) -> int | None:
        """Move every queued request into a new batch; None when nothing is queued."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, new_samples FROM requests WHERE state = ?",
                (RequestState.QUEUED.value,),
            ).fetchall()
            if not rows:
                return None
            cur = db.execute(
                "INSERT INTO batches (state, reason, created_at, updated_at, samples) "
                "VALUES (?, ?, ?, ?, ?)",
                (BatchState.BATCHED.value, reason, now, now, sum(r[1] for r in rows)),
            )
            bid = cur.lastrowid
            db.executemany(
                "UPDATE requests SET state = ?, batch_id = ?, updated_at = ? WHERE id = ?",
                [(RequestState.BATCHED.value, bid, now, r[0]) for r in rows],
            )
        return bid

    def unfinished_batches(self) -> list[int]:
        with self._read():
            rows = self._db.execute(
                "SELECT id FROM batches WHERE state IN (?, ?) ORDER BY id",
                (BatchState.BATCHED.value, BatchState.RETUNING.value),
            ).fetchall()
        return [r[0] for r in rows]

    def batch_items(self, bid: int) -> tuple[list[str], list[str]]:
        with self._read():
            rows = self._db.execute(
                "SELECT DISTINCT i.kind, i.ident FROM items i JOIN requests r "
                "ON r.id = i.request_id WHERE r.batch_id = ? ORDER BY i.kind, i.ident",
                (bid,),
            ).fetchall()
        return (
            [i for k, i in rows if k == "sample"],
            [i for k, i in rows if k == "subject"],
        )

    def request_items(self, bid: int) -> list[tuple[DeletionRequest, list[str], list[str]]]:
        """Each pending request of a batch with its own sample and subject ids (read before
        publication erases them), in request id order."""
        with self._read():
            ids = [
                r[0]
                for r in self._db.execute(
                    "SELECT id FROM requests WHERE batch_id = ? AND state IN (?, ?) ORDER BY id",
                    (bid, RequestState.BATCHED.value, RequestState.RETUNING.value),
                )
            ]
            out = []
            for rid in ids:
                rows = self._db.execute(
                    "SELECT kind, ident FROM items WHERE request_id = ? ORDER BY kind, ident",
                    (rid,),
                ).fetchall()
                req = self._get(rid)
                assert req is not None  # just selected, under the lock; never deleted
                out.append(
                    (
                        req,
                        [i for k, i in rows if k == "sample"],
                        [i for k, i in rows if k == "subject"],
                    )
                )
        return out

    def batch(self, bid: int) -> dict | None:
        with self._read():
            cur = self._db.execute("SELECT * FROM batches WHERE id = ?", (bid,))
            row = cur.fetchone()
            names = [d[0] for d in cur.description]
        return dict(zip(names, row)) if row else None

    def last_batch(self) -> dict | None:
        with self._read():
            row = self._db.execute("SELECT MAX(id) FROM batches").fetchone()
        return self.batch(row[0]) if row and row[0] is not None else None

    def mark_retuning(self, bid: int, now: float) -> int:
        """Start an attempt; returns the highest attempt count among the batch's requests."""
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET state = ?, attempts = attempts + 1, updated_at = ? "
                "WHERE id = ?",
                (BatchState.RETUNING.value, now, bid),
            )
            db.execute(
                "UPDATE requests SET state = ?, attempts = attempts + 1, updated_at = ? "
                "WHERE batch_id = ? AND state IN (?, ?)",
                (
                    RequestState.RETUNING.value,
                    now,
                    bid,
                    RequestState.BATCHED.value,
                    RequestState.RETUNING.value,
                ),
            )
            row = db.execute(
                "SELECT COALESCE(MAX(attempts), 0) FROM requests WHERE batch_id = ?", (bid,)
            ).fetchone()
        return row[0]

    def mark_published(
        self, bid: int, version: int, affected: int, retrained: int, seconds: float, now: float
    ) -> None:
        """Record publication and erase the batch's raw ids (keyed counts stay)."""
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET state = ?, version = ?, affected = ?, retrained = ?, "
                "seconds = ?, updated_at = ?, error = NULL WHERE id = ?",
                (BatchState.PUBLISHED.value, version, affected, retrained, seconds, now, bid),
            )
            db.execute(
                "UPDATE requests SET state = ?, version = ?, updated_at = ?, published_at = ?, "
                "reason = NULL WHERE batch_id = ? AND state != ?",
                (RequestState.PUBLISHED.value, version, now, now, bid, RequestState.FAILED.value),
            )
            ledger.erase(db, bid)
            db.execute(
                "DELETE FROM items WHERE request_id IN "
                "(SELECT id FROM requests WHERE batch_id = ?)",
                (bid,),
            )
        self.scrub()

    def mark_retry(self, bid: int, error: str, now: float) -> None:
        """Record a failed attempt: the batch keeps its requests and will be tried again."""
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                (BatchState.BATCHED.value, error, now, bid),
            )
            db.execute(
                "UPDATE requests SET state = ?, reason = ?, updated_at = ? "
                "WHERE batch_id = ? AND state IN (?, ?)",
                (
                    RequestState.BATCHED.value,
                    error,
                    now,
                    bid,
                    RequestState.BATCHED.value,
                    RequestState.RETUNING.value,
                ),
            )

    def fail(self, bid: int, reason: str, now: float, expired_only: bool = False) -> int:
        """Fail requests of a batch that was not published, for good, and erase their raw
        ids: all of them (an invalid batch), or those whose deadline is before ``now``.
        A batch left without a pending request fails with them.

        Returns how many requests failed.
        """
        live = (RequestState.BATCHED.value, RequestState.RETUNING.value)
        with self._tx() as db:
            sql = (
                "UPDATE requests SET state = ?, reason = ?, updated_at = ? "
                "WHERE batch_id = ? AND state IN (?, ?)"
            )
            args: tuple = (RequestState.FAILED.value, reason, now, bid, *live)
            if expired_only:
                sql += " AND deadline < ?"
                args += (now,)
            failed = db.execute(sql, args).rowcount
            ledger.release(db, bid)
            db.execute(
                "DELETE FROM items WHERE request_id IN "
                "(SELECT id FROM requests WHERE batch_id = ? AND state = ?)",
                (bid, RequestState.FAILED.value),
            )
            (left,) = db.execute(
                "SELECT COUNT(*) FROM requests WHERE batch_id = ? AND state IN (?, ?)",
                (bid, *live),
            ).fetchone()
            if not left:
                db.execute(
                    "UPDATE batches SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                    (BatchState.FAILED.value, reason, now, bid),
                )
        if failed:
            self.scrub()
        return failed

    def scrub(self) -> None:
        """Fold the WAL into the database and truncate it, so deleted rows leave no copy."""
        with self._read():
            for _ in range(50):
                busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if not busy:
                    return
                time.sleep(0.01)
        log.warning("queue WAL checkpoint stayed blocked; deleted ids may linger in the WAL")
