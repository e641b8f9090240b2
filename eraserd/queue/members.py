"""The distinct-sample ledger: the samples pending requests name, as keyed hashes, and the
request each is credited to, so that a sample named by several pending requests counts once.

Invariant, in every committed state: each distinct hash held by a pending request is credited
to exactly one pending request (its ``credited`` row, counted in that request's
``new_samples``, which the tallies sum). Only pending requests hold rows: publication and
failure remove them. The functions run inside the queue's transactions.
"""

from __future__ import annotations

import sqlite3

from .records import RequestState


def held(db: sqlite3.Connection, members: list[str]) -> set[str]:
    """Which of these member hashes a pending request names (only pending requests
    have members: publication and failure delete them)."""
    return {
        h
        for h in members
        if db.execute("SELECT 1 FROM members WHERE h = ? LIMIT 1", (h,)).fetchone()
    }


def add(db: sqlite3.Connection, rid: str, members: list[str], held: set[str]) -> None:
    """Record a new request's samples; it is credited with those not ``held`` already."""
    db.executemany(
        "INSERT INTO members VALUES (?, ?, ?)", [(h, rid, int(h not in held)) for h in members]
    )


def erase(db: sqlite3.Connection, bid: int) -> None:
    """A published batch erased its samples: no pending request names them any more,
    so their rows go everywhere, and a request outside the batch that held the credit
    for one gives it back. O(the batch's samples), each an index lookup."""
    mine = {
        r[0] for r in db.execute("SELECT id FROM requests WHERE batch_id = ?", (bid,)).fetchall()
    }
    hashes = db.execute(
        "SELECT DISTINCT m.h FROM members m JOIN requests r ON r.id = m.request_id "
        "WHERE r.batch_id = ?",
        (bid,),
    ).fetchall()
    debit: dict[str, int] = {}
    for (h,) in hashes:
        for rid, credited in db.execute(
            "SELECT request_id, credited FROM members WHERE h = ?", (h,)
        ).fetchall():
            if credited and rid not in mine:
                debit[rid] = debit.get(rid, 0) + 1
        db.execute("DELETE FROM members WHERE h = ?", (h,))
    db.executemany(
        "UPDATE requests SET new_samples = new_samples - ? WHERE id = ?",
        [(n, rid) for rid, n in sorted(debit.items())],
    )


def release(db: sqlite3.Connection, bid: int) -> None:
    """Failed requests of batch ``bid`` erased nothing: a sample they held the credit
    for passes it to another pending request that names it (the first by rowid)."""
    failed = (bid, RequestState.FAILED.value)
    rows = db.execute(
        "SELECT m.h FROM members m JOIN requests r ON r.id = m.request_id "
        "WHERE r.batch_id = ? AND r.state = ? AND m.credited = 1",
        failed,
    ).fetchall()
    db.execute(
        "DELETE FROM members WHERE request_id IN "
        "(SELECT id FROM requests WHERE batch_id = ? AND state = ?)",
        failed,
    )
    for (h,) in rows:
        heir = db.execute(
            "SELECT rowid, request_id FROM members WHERE h = ? ORDER BY rowid LIMIT 1", (h,)
        ).fetchone()
        if heir is not None:
            db.execute("UPDATE members SET credited = 1 WHERE rowid = ?", (heir[0],))
            db.execute("UPDATE requests SET new_samples = new_samples + 1 WHERE id = ?", (heir[1],))
