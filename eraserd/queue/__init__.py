"""The durable deletion queue: requests, batches and their state machine, in SQLite.

WAL with ``synchronous=FULL``: a submission is acknowledged only after its commit is on disk;
submissions that arrive together share one commit (``group.py``).
Raw ids are kept only while a request is pending; when its batch is published they are
deleted (``secure_delete``) and the WAL is truncated, leaving counts and keyed hashes.

Request states::

    received -> queued -> batched -> retuning -> published
                             ^           |
                             +- (retry) -+-> failed (closed: an invalid request, or its
                                                     deadline passed unpublished)

A failed attempt (a crash, a dead worker, a full disk) keeps the batch and its requests
together; the daemon tries the same batch again. Attempts never turn into failures.
"""

from .db import Queue
from .records import (
    PENDING,
    Admission,
    BatchState,
    DeletionRequest,
    IdempotencyConflict,
    Page,
    Pending,
    Position,
    RequestState,
    decode_cursor,
    encode_cursor,
)
from .view import QueueFacts, QueueView

__all__ = [
    "PENDING",
    "Admission",
    "BatchState",
    "DeletionRequest",
    "IdempotencyConflict",
    "Page",
    "Pending",
    "Position",
    "Queue",
    "QueueFacts",
    "QueueView",
    "RequestState",
    "decode_cursor",
    "encode_cursor",
]
