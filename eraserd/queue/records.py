"""The queue's records: request and batch states, the SQLite schema, and the values the queue
hands out (a request, the pending totals, an admission, a listing page and its cursor)."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import asdict, dataclass
from enum import Enum


class RequestState(str, Enum):
    RECEIVED = "received"
    QUEUED = "queued"
    BATCHED = "batched"
    RETUNING = "retuning"
    PUBLISHED = "published"
    FAILED = "failed"


class BatchState(str, Enum):
    BATCHED = "batched"
    RETUNING = "retuning"
    PUBLISHED = "published"
    FAILED = "failed"


PENDING = (RequestState.QUEUED, RequestState.BATCHED, RequestState.RETUNING)

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
CREATE INDEX IF NOT EXISTS requests_state ON requests(state);
CREATE INDEX IF NOT EXISTS requests_created ON requests(created_at);
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


@dataclass(frozen=True)
class DeletionRequest:
    id: str
    state: str
    created_at: float
    updated_at: float
    deadline: float
    samples: int
    subjects: int
    already_forgotten: int
    already_pending: int
    batch_id: int | None
    version: int | None
    attempts: int
    reason: str | None
    published_at: float | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Pending:
    requests: int
    samples: int
    """Distinct samples: one named by several pending requests counts once."""
    oldest_created: float | None
    earliest_deadline: float | None


@dataclass(frozen=True)
class Admission:
    """What ``Queue.admit`` did with a submission."""

    request: DeletionRequest
    created: bool
    """False: an idempotent retry, answered with the request the key already made."""
    already_pending: tuple[str, ...] = ()
    """Ids (``sample X``, ``subject Y``) a pending request already names."""
    pending: Pending | None = None
    """The queue's pending totals right after the submission (what the flush policy reads)."""


class IdempotencyConflict(Exception):
    """An idempotency key was reused with a different request body."""


Position = tuple[float, str]
"""Where a request sits in the listing order: (created_at, id)."""


@dataclass(frozen=True)
class Page:
    """One page of the listing, newest first."""

    requests: list[DeletionRequest]
    after: Position | None
    """The last request's position, where the next page starts; None on the last page."""


def encode_cursor(position: Position) -> str:
    """An opaque, URL-safe cursor for a listing position."""
    raw = json.dumps(list(position), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position ``encode_cursor`` wrote; ValueError for anything else."""
    try:
        created_at, rid = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        created_at = rid = None
    if (
        isinstance(created_at, bool)
        or not isinstance(created_at, int | float)
        or not math.isfinite(created_at)
        or not isinstance(rid, str)
    ):
        raise ValueError("not a cursor this API returned (pass next_cursor as it came)")
    return float(created_at), rid


_REQUEST_COLS = (
    "id, state, created_at, updated_at, deadline, samples, subjects, already_forgotten, "
    "already_pending, batch_id, version, attempts, reason, published_at"
)
