"""Deletion certificates in a hash-chained, append-only audit log (``state_dir/audit.jsonl``).

One JSON line per published request::

    {"seq": 7, "prev": "<hash of entry 6>", "certificate": {...}, "hash": "<sha256>"}

``hash`` is the SHA-256 of the canonical JSON of ``seq``, ``prev`` and ``certificate``, so
each entry commits to the one before it: editing, removing or reordering any entry breaks the
chain from there on, and ``check_chain`` names the first entry that does not hold.

A certificate names ids only by their keyed tombstone hashes (``Store.tombstone``), never
raw. Appends are fsynced before the request is marked published; a line a crash left
half-written was never acknowledged and is dropped when the log is opened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from .errors import EraserdError

log = logging.getLogger("eraserd.audit")

GENESIS = "0" * 64
"""``prev`` of the first entry."""


class AuditError(EraserdError):
    """The audit log cannot be read or appended to."""


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(seq: int, prev: str, certificate: dict) -> str:
    return hashlib.sha256(
        canonical({"seq": seq, "prev": prev, "certificate": certificate})
    ).hexdigest()


def make_entry(previous: dict | None, certificate: dict) -> dict:
    seq = previous["seq"] + 1 if previous else 1
    prev = previous["hash"] if previous else GENESIS
    return {
        "seq": seq,
        "prev": prev,
        "certificate": certificate,
        "hash": entry_hash(seq, prev, certificate),
    }


def check_chain(lines: list[str]) -> list[str]:
    """Every problem of a log's lines, each naming its entry (line number and ``seq``); an
    empty list means the chain holds. Pure."""
    problems: list[str] = []
    prev: str | None = GENESIS
    seq = 0
    for n, line in enumerate(lines, start=1):
        where = f"entry {n}"
        try:
            e = json.loads(line)
            seq_e, prev_e, cert, h = e["seq"], e["prev"], e["certificate"], e["hash"]
        except (ValueError, KeyError, TypeError):
            problems.append(f"{where}: not a well-formed audit entry")
            prev, seq = None, seq + 1
            continue
        where = f"entry {n} (seq {seq_e}, request {cert.get('request', '?')})"
        if seq_e != seq + 1:
            problems.append(f"{where}: sequence number {seq_e}, expected {seq + 1}")
        if prev is not None and prev_e != prev:
            problems.append(f"{where}: does not commit to the entry before it")
        if entry_hash(seq_e, prev_e, cert) != h:
            problems.append(f"{where}: its content does not match its hash (edited)")
        prev, seq = h, seq_e
    return problems


AUDIT_FILE = "audit.jsonl"


def _complete_lines(data: bytes) -> list[str]:
    return data[: data.rfind(b"\n") + 1].decode(errors="replace").splitlines()


class AuditLog:
    """``audit.jsonl``: appended to by the daemon (``writer=True``, under the state lock),
    read by anyone. A reader ignores a last line still being written."""

    def __init__(self, path: Path, writer: bool = False):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._last: dict | None = None
        self._requests: set[str] = set()
        self._load(writer)

    def _load(self, writer: bool) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if writer and data and not data.endswith(b"\n"):
            # A crash mid-append: that entry was never acknowledged. Drop the torn tail.
            keep = data.rfind(b"\n") + 1
            log.warning(
                "dropping a half-written audit entry", extra={"fields": {"bytes": len(data) - keep}}
            )
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                os.fsync(f.fileno())
            data = data[:keep]
        for line in _complete_lines(data):
            try:
                e = json.loads(line)
                self._requests.add(e["certificate"]["request"])
                self._last = e
            except (ValueError, KeyError, TypeError):
                continue  # reported by ``check_chain``

    def lines(self) -> list[str]:
        if not self.path.exists():
            return []
        return _complete_lines(self.path.read_bytes())

    def entries(self) -> list[dict]:
        out = []
        for line in self.lines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def find(self, request_id: str) -> dict | None:
        for e in self.entries():
            if e.get("certificate", {}).get("request") == request_id:
                return e
        return None

    def has(self, request_id: str) -> bool:
        return request_id in self._requests

    def append(self, certificate: dict) -> dict | None:
        """Append one certificate durably; a request already certified is not appended twice
        (a batch retried after a crash): its existing entry is returned instead (None if the
        log no longer holds it)."""
        with self._lock:
            if certificate["request"] in self._requests:
                return self.find(certificate["request"])
            entry = make_entry(self._last, certificate)
            line = canonical(entry) + b"\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                try:
                    if os.write(fd, line) != len(line):
                        raise OSError("short write to the audit log")
                    os.fsync(fd)
                except BaseException:
                    os.ftruncate(fd, size)  # a full disk leaves no torn entry behind
                    raise
            finally:
                os.close(fd)
            self._last = entry
            self._requests.add(certificate["request"])
            return entry
