"""The queue's read model: counts and times from ``queue.db``, on a read-only connection.

The metrics read the queue only through this view. It never reads the ``items`` table (raw
ids) and never takes the ``Queue``'s lock, so a scrape does not wait for the batch runner's
transactions.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from .records import PENDING, BatchState


@dataclass(frozen=True)
class QueueFacts:
    pending_requests: int
    pending_samples: int
    oldest_pending: float | None
    overdue: int
    recent_samples: int
    """Distinct samples submitted within the rate horizon (to the second): a sample already
    pending when named again does not count twice."""
    first_submitted: float | None
    last_published: float | None


class QueueView:
    """Counts and times from ``queue.db`` on a read-only connection of its own.

    It never reads the ``items`` table (raw ids) and never takes the ``Queue``'s lock, so a
    scrape does not wait for the batch runner's transactions.
    """

    def __init__(self, path: Path):
        uri = Path(path).resolve().as_uri() + "?mode=ro"
        self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def facts(self, now: float, horizon_s: float) -> QueueFacts:
        """Kept tallies and index lookups only: its cost does not grow with the queue."""
        states = tuple(s.value for s in PENDING)
        marks = ",".join("?" * len(states))
        with self._lock:
            requests, samples = self._db.execute(
                "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(samples), 0) FROM tallies "
                f"WHERE state IN ({marks})",
                states,
            ).fetchone()
            oldest: float | None = None
            overdue = 0
            for state in states:  # per state, so each is one index range (state, ...)
                (first,) = self._db.execute(
                    "SELECT MIN(created_at) FROM requests WHERE state = ?", (state,)
                ).fetchone()
                if first is not None and (oldest is None or first < oldest):
                    oldest = first
                (late,) = self._db.execute(
                    "SELECT COUNT(*) FROM requests WHERE state = ? AND deadline < ?",
                    (state, now),
                ).fetchone()
                overdue += late
            (recent,) = self._db.execute(
                "SELECT COALESCE(SUM(samples), 0) FROM arrivals WHERE second >= ?",
                (int(now - horizon_s),),
            ).fetchone()
            row = self._db.execute(
                "SELECT value FROM meta WHERE key = 'first_submitted'"
            ).fetchone()
            (last,) = self._db.execute(
                "SELECT MAX(updated_at) FROM batches WHERE state = ?",
                (BatchState.PUBLISHED.value,),
            ).fetchone()
        return QueueFacts(requests, samples, oldest, overdue, recent, row[0] if row else None, last)

    def published_times(self, batch_id: int) -> list[tuple[float, float, float]]:
        """(submitted, deadline, published) of each request a batch published."""
        with self._lock:
            return self._db.execute(
                "SELECT created_at, deadline, published_at FROM requests "
                "WHERE batch_id = ? AND published_at IS NOT NULL",
                (batch_id,),
            ).fetchall()
