"""The queue's SQLite schema, and the upgrade a queue.db written by an earlier release gets
on open: new columns, then the tables and triggers derived from the rows, filled once."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from .records import RequestState

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    idem TEXT UNIQUE,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    deadline REAL NOT NULL,
    samples INTEGER NOT NULL,
    subjects INTEGER NOT NULL,
    already_forgotten INTEGER NOT NULL DEFAULT 0,
    already_pending INTEGER NOT NULL DEFAULT 0,
    batch_id INTEGER,
    version INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    published_at REAL
);
CREATE INDEX IF NOT EXISTS requests_batch ON requests(batch_id);
-- Listing pages (GET /v1/deletions): newest first, keyset on (created_at, id), by state or not.
CREATE INDEX IF NOT EXISTS requests_listing ON requests(created_at, id);
CREATE INDEX IF NOT EXISTS requests_state_listing ON requests(state, created_at, id);
CREATE TABLE IF NOT EXISTS items (
    request_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('sample', 'subject')),
    ident TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_request ON items(request_id);
CREATE INDEX IF NOT EXISTS items_ident ON items(kind, ident);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    samples INTEGER NOT NULL,
    version INTEGER,
    affected INTEGER,
    retrained INTEGER,
    seconds REAL,
    error TEXT
);
"""

COLUMNS = {"requests": {"new_samples": ("INTEGER NOT NULL DEFAULT 0", "samples")}}
"""Columns added since the first release, as (declaration, what fills the rows already there):
a queue.db written before gets them on open. Before, each request counted all its samples."""

DERIVED = """
-- Keyed hashes of the samples pending requests name, subjects expanded. A sample named by
-- several pending requests is credited to one of them (``credited``, and that request's
-- ``new_samples``), so it counts once. Rows leave with their request's items.
CREATE TABLE IF NOT EXISTS members (
    h TEXT NOT NULL, request_id TEXT NOT NULL, credited INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS members_h ON members(h);
CREATE INDEX IF NOT EXISTS members_request ON members(request_id);
-- Requests and distinct samples per state, kept by the triggers below in the same
-- transaction as each change: reading them never scans the requests.
CREATE TABLE IF NOT EXISTS tallies (
    state TEXT PRIMARY KEY, requests INTEGER NOT NULL, samples INTEGER NOT NULL
);
-- Distinct samples submitted per second, for the rate estimate's horizon.
CREATE TABLE IF NOT EXISTS arrivals (second INTEGER PRIMARY KEY, samples INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE INDEX IF NOT EXISTS requests_state_deadline ON requests(state, deadline);
-- Written by earlier releases; each is a prefix of a listing index, which serves its lookups
-- (state; created_at), so every submission wrote two index entries nothing needed.
DROP INDEX IF EXISTS requests_state;
DROP INDEX IF EXISTS requests_created;
CREATE INDEX IF NOT EXISTS requests_state_updated ON requests(state, updated_at);
CREATE INDEX IF NOT EXISTS batches_state_updated ON batches(state, updated_at);
CREATE TRIGGER IF NOT EXISTS requests_tally_insert AFTER INSERT ON requests BEGIN
    UPDATE tallies SET requests = requests + 1, samples = samples + NEW.new_samples
        WHERE state = NEW.state;
    INSERT OR IGNORE INTO arrivals VALUES (CAST(NEW.created_at AS INTEGER), 0);
    UPDATE arrivals SET samples = samples + NEW.new_samples
        WHERE second = CAST(NEW.created_at AS INTEGER);
    INSERT OR IGNORE INTO meta VALUES ('first_submitted', NEW.created_at);
END;
CREATE TRIGGER IF NOT EXISTS requests_tally_update AFTER UPDATE OF state, new_samples
ON requests WHEN OLD.state != NEW.state OR OLD.new_samples != NEW.new_samples BEGIN
    UPDATE tallies SET requests = requests - 1, samples = samples - OLD.new_samples
        WHERE state = OLD.state;
    UPDATE tallies SET requests = requests + 1, samples = samples + NEW.new_samples
        WHERE state = NEW.state;
END;
CREATE TRIGGER IF NOT EXISTS requests_tally_delete AFTER DELETE ON requests BEGIN
    UPDATE tallies SET requests = requests - 1, samples = samples - OLD.new_samples
        WHERE state = OLD.state;
END;
"""
"""What ``Queue`` derives from the requests: created, and filled from the rows once, on the
first open of a queue.db that lacks it."""


def upgrade(db: sqlite3.Connection, member: Callable[[str], str]) -> None:
    """Add what later releases keep beside the rows, filled from the rows, once; inside the
    caller's transaction. ``member`` is the queue's keyed hash of a sample id."""
    for table, cols in COLUMNS.items():
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        for name, (decl, fill) in cols.items():
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
                db.execute(f"UPDATE {table} SET {name} = {fill}")
    fresh = not db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tallies'"
    ).fetchone()
    for stmt in statements(DERIVED):
        db.execute(stmt)
    if not fresh:
        return
    db.executemany("INSERT INTO tallies VALUES (?, 0, 0)", [(st.value,) for st in RequestState])
    db.execute(
        "UPDATE tallies SET (requests, samples) = (SELECT COUNT(*), "
        "COALESCE(SUM(new_samples), 0) FROM requests r WHERE r.state = tallies.state)"
    )
    db.execute(
        "INSERT INTO arrivals SELECT CAST(created_at AS INTEGER), SUM(new_samples) "
        "FROM requests GROUP BY CAST(created_at AS INTEGER)"
    )
    db.execute(
        "INSERT INTO meta SELECT 'first_submitted', MIN(created_at) FROM requests "
        "HAVING COUNT(*) > 0"
    )
    # Requests queued before: their named samples (subjects were not expanded then).
    rows = db.execute("SELECT request_id, ident FROM items WHERE kind = 'sample'").fetchall()
    db.executemany("INSERT INTO members VALUES (?, ?, 0)", [(member(i), r) for r, i in rows])


def statements(script: str) -> list[str]:
    """The statements of a schema script, triggers kept whole (``sqlite3.complete_statement``),
    to run inside one transaction (``executescript`` would commit first)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        if not buf and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return out
