"""The queue's records: request and batch states and the values the queue hands out (a
request, the pending totals, an admission, a listing page and its cursor)."""

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
