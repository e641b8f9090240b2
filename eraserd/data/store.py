"""The private store: ingested bytes, sample index, feature cache and tombstones.

Layout under ``state_dir``::

    secret        32 random bytes (0600): keys every persisted hash of an id
    store.db      SQLite: samples, features, tombstones, meta (secure_delete on)
    objects/      one file per sample, named by a keyed hash of its id

Deleting a sample removes its object file and its rows; SQLite's ``secure_delete`` zeroes the
freed bytes and the rollback journal is deleted at commit, so no copy survives in any file.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dbutil import immediate
from ..errors import DataError, UnknownIdError
from ..fsutil import atomic_write, fsync_dir, private_dir
from ..ids import private_key
from .images import ImageDecodeError, check_readable
from .sources import Source

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    sample_id TEXT PRIMARY KEY,
    subject_id TEXT,
    label INTEGER NOT NULL,
    split TEXT NOT NULL CHECK (split IN ('train', 'test')),
    key TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS samples_subject ON samples(subject_id);
CREATE TABLE IF NOT EXISTS features (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    vec BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tombstones (
    digest TEXT PRIMARY KEY,
    kind TEXT NOT NULL
);
"""

_MAX_LISTED = 10
_IN_CHUNK = 500
"""Keys per ``IN (...)`` query: under SQLite's variable limit."""
_UNLINKING = "unlinking"
"""meta: the object files a purge committed to delete and has not yet unlinked."""


@dataclass(frozen=True)
class SampleRow:
    sample_id: str
    subject_id: str | None
    label: int
    split: str
    key: str
    """Keyed hash of the sample id: the only name the registry and the object store use."""


class Store:
    def __init__(self, state_dir: Path, readonly: bool = False):
        """Open (creating if needed) the store. ``readonly`` opens an existing store for
        lookups from another thread, without touching files."""
        self.root = Path(state_dir)
        self.objects = self.root / "objects"
        self.db_path = self.root / "store.db"
        if readonly:
            self.secret = bytes.fromhex((self.root / "secret").read_text().strip())
            self._db = sqlite3.connect(
                f"file:{self.db_path}?mode=ro", uri=True, check_same_thread=False
            )
            return
        private_dir(self.root)
        self.objects.mkdir(mode=0o700, exist_ok=True)
        self.secret = self._load_secret()
        # One owner thread at a time (the CLI, or the daemon's batch runner).
        self._db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=DELETE")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(SCHEMA)
        self._recover()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _load_secret(self) -> bytes:
        path = self.root / "secret"
        if not path.exists():
            atomic_write(path, secrets.token_hex(32).encode(), mode=0o600)
        return bytes.fromhex(path.read_text().strip())

    def _tx(self):
        return immediate(self._db)

    def key_of(self, sample_id: str) -> str:
        return private_key(self.secret, "sample", sample_id)

    def _tomb(self, kind: str, ident: str) -> str:
        return private_key(self.secret, f"tombstone-{kind}", ident)

    def tombstone(self, kind: str, ident: str) -> str:
        """The keyed hash that stands for a forgotten ``sample`` or ``subject`` id (in the
        tombstones and in deletion certificates)."""
        return self._tomb(kind, ident)

    def tombstones(self) -> set[tuple[str, str]]:
        """Every (kind, keyed hash) tombstone."""
        return {(k, d) for d, k in self._db.execute("SELECT digest, kind FROM tombstones")}

    def feature_keys(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT key FROM features")}

    # ---- meta -----------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def classes(self) -> list[str]:
        raw = self.meta("classes")
        if raw is None:
            raise DataError(f"{self.root}: nothing has been ingested yet")
        return json.loads(raw)

    def is_empty(self) -> bool:
        return self.meta("classes") is None

    # ---- ingest ---------------------------------------------------------------------------

    def _recover(self) -> None:
        """Finish what a crash interrupted, touching only what it names: an ingest (its
        staging directory is there until the ingest is over) and a purge's object files
        (listed in meta until they are unlinked). A clean open lists no directory."""
        if (self.root / "staging").exists():
            self._drop_staging()
        if self.meta(_UNLINKING) is not None:
            self._unlink([])

    def _drop_staging(self) -> None:
        """Remove what an interrupted ingest left: unindexed objects, then staging files."""
        known = {r[0] for r in self._db.execute("SELECT key FROM samples")}
        for path in self.objects.iterdir():
            if path.name not in known:
                path.unlink()
        shutil.rmtree(self.root / "staging", ignore_errors=True)

    def ingest(self, source: Source, split_of, progress=None) -> int:
        """Copy every sample of ``source`` in, or nothing at all.

        ``split_of(sample_id, subject_id) -> 'train' | 'test'`` decides the held-out split.
        """
        if not self.is_empty():
            raise DataError(f"{self.root}: data was already ingested")
        staging = self.root / "staging"
        staging.mkdir()
        rows: list[tuple] = []
        problems: list[str] = []
        seen: dict[str, str] = {}
        label_index = {c: i for i, c in enumerate(source.classes)}
        try:
            for sample in source.samples():
                if progress is not None:
                    progress(1)
                problem = self._check(sample, seen, label_index)
                if problem is None:
                    try:
                        data = sample.read()
                        check_readable(data)
                    except FileNotFoundError:
                        problem = f"{sample.origin}: file not found"
                    except OSError as exc:
                        problem = f"{sample.origin}: cannot read file: {exc.strerror or exc}"
                    except ImageDecodeError as exc:
                        problem = f"{sample.origin}: not a readable image ({exc})"
                if problem is not None:
                    problems.append(problem)
                    continue
                key = self.key_of(sample.sample_id)
                (staging / key).write_bytes(data)
                split = split_of(sample.sample_id, sample.subject_id)
                rows.append(
                    (sample.sample_id, sample.subject_id, label_index[sample.label], split, key)
                )
            if problems:
                more = len(problems) - _MAX_LISTED
                listed = "; ".join(problems[:_MAX_LISTED]) + (
                    f"; and {more} more" if more > 0 else ""
                )
                raise DataError(f"ingest refused, nothing was stored: {listed}")
            if not rows:
                raise DataError(f"ingest refused: {source.description} holds no samples")
            if not any(r[3] == "train" for r in rows):
                raise DataError(
                    "ingest refused: every sample fell into the test split; "
                    "lower data.test_fraction"
                )
            for row in rows:
                os.replace(staging / row[4], self.objects / row[4])
            fsync_dir(self.objects)
            with self._tx() as db:
                db.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?)", rows)
                db.execute("INSERT INTO meta VALUES ('classes', ?)", (json.dumps(source.classes),))
                db.execute("INSERT INTO meta VALUES ('source', ?)", (source.description,))
        except BaseException:
            self._drop_staging()
            raise
        shutil.rmtree(staging, ignore_errors=True)
        return len(rows)

    def _check(self, sample, seen: dict[str, str], label_index: dict[str, int]) -> str | None:
        sid = sample.sample_id
        if not sid or sid != sid.strip() or any(ord(c) < 32 for c in sid):
            return f"{sample.origin}: invalid sample id {sid!r}"
        if sid in seen:
            return f"{sample.origin}: duplicate sample id {sid!r} (also {seen[sid]})"
        seen[sid] = sample.origin
        if sample.label not in label_index:
            return f"{sample.origin}: unknown label {sample.label!r}"
        if self._is_tombstoned("sample", sid) or (
            sample.subject_id is not None and self._is_tombstoned("subject", sample.subject_id)
        ):
            return f"{sample.origin}: this sample was forgotten and cannot be ingested again"
        return None

    def _is_tombstoned(self, kind: str, ident: str) -> bool:
        digest = self._tomb(kind, ident)
        return (
            self._db.execute("SELECT 1 FROM tombstones WHERE digest = ?", (digest,)).fetchone()
            is not None
        )

    # ---- reads ----------------------------------------------------------------------------

    def rows(self, split: str | None = None) -> list[SampleRow]:
        """Live samples sorted by sample id (the one canonical order)."""
        sql = "SELECT sample_id, subject_id, label, split, key FROM samples"
        args: tuple = ()
        if split is not None:
            sql += " WHERE split = ?"
            args = (split,)
        rows = [SampleRow(*r) for r in self._db.execute(sql, args)]
        rows.sort(key=lambda r: r.sample_id)
        return rows

    def rows_by_keys(self, keys: Iterable[str]) -> list[SampleRow]:
        """The live samples with these keys, sorted by sample id (unknown keys are left out):
        one index lookup each."""
        keys = list(keys)
        out: list[SampleRow] = []
        for start in range(0, len(keys), _IN_CHUNK):
            part = keys[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(part))
            out.extend(
                SampleRow(*r)
                for r in self._db.execute(
                    "SELECT sample_id, subject_id, label, split, key FROM samples "
                    f"WHERE key IN ({marks})",
                    part,
                )
            )
        out.sort(key=lambda r: r.sample_id)
        return out

    def count(self, split: str) -> int:
        """Live samples of one split."""
        return int(
            self._db.execute("SELECT COUNT(*) FROM samples WHERE split = ?", (split,)).fetchone()[0]
        )

    def read_object(self, row: SampleRow) -> bytes:
        return (self.objects / row.key).read_bytes()

    def _row(self, sample_id: str) -> SampleRow | None:
        r = self._db.execute(
            "SELECT sample_id, subject_id, label, split, key FROM samples WHERE sample_id = ?",
            (sample_id,),
        ).fetchone()
        return SampleRow(*r) if r else None

    def _subject_rows(self, subject_id: str) -> list[SampleRow]:
        rs = self._db.execute(
            "SELECT sample_id, subject_id, label, split, key FROM samples WHERE subject_id = ?",
            (subject_id,),
        ).fetchall()
        return [SampleRow(*r) for r in rs]

    def classify(
        self, sample_ids: Iterable[str] = (), subject_ids: Iterable[str] = ()
    ) -> tuple[list[SampleRow], list[str], list[str]]:
        """(live rows named, unknown ids, already-forgotten ids); ids read ``sample X`` or
        ``subject X`` in the two lists."""
        found: dict[str, SampleRow] = {}
        unknown: list[str] = []
        forgotten: list[str] = []
        for sid in sorted(set(sample_ids)):
            row = self._row(sid)
            if row is not None:
                found[sid] = row
            elif self._is_tombstoned("sample", sid):
                forgotten.append(f"sample {sid}")
            else:
                unknown.append(f"sample {sid}")
        for subj in sorted(set(subject_ids)):
            rows = self._subject_rows(subj)
            if rows:
                found.update((r.sample_id, r) for r in rows)
            elif self._is_tombstoned("subject", subj):
                forgotten.append(f"subject {subj}")
            else:
                unknown.append(f"subject {subj}")
        return sorted(found.values(), key=lambda r: r.sample_id), unknown, forgotten

    def resolve(
        self, sample_ids: Iterable[str] = (), subject_ids: Iterable[str] = ()
    ) -> list[SampleRow]:
        """The live rows named by ids; every id must be live, else nothing is returned."""
        found, unknown, forgotten = self.classify(sample_ids, subject_ids)
        if unknown or forgotten:
            parts = []
            if unknown:
                parts.append(f"unknown id(s): {', '.join(unknown)}")
            if forgotten:
                parts.append(f"already forgotten: {', '.join(forgotten)}")
            raise UnknownIdError("; ".join(parts) + "; nothing was changed", unknown + forgotten)
        if not found:
            raise UnknownIdError("no ids given; nothing was changed")
        return found

    def copy_live_to(self, dest: Path) -> None:
        """Copy live samples (rows, objects, classes) into a new store; no features."""
        with Store(dest) as other:
            rows = self.rows()
            for r in rows:
                shutil.copyfile(self.objects / r.key, other.objects / r.key)
            with other._tx() as db:
                db.executemany(
                    "INSERT INTO samples VALUES (?, ?, ?, ?, ?)",
                    [(r.sample_id, r.subject_id, r.label, r.split, r.key) for r in rows],
                )
                db.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    self._db.execute("SELECT key, value FROM meta").fetchall(),
                )

    # ---- feature cache --------------------------------------------------------------------

    def cached_features(self, keys: list[str], fingerprint: str) -> dict[str, np.ndarray]:
        """The cached features of ``keys`` (those computed with ``fingerprint``): one primary
        key lookup each, whatever the size of the cache."""
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), _IN_CHUNK):
            part = keys[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(part))
            for key, vec in self._db.execute(
                f"SELECT key, vec FROM features WHERE key IN ({marks}) AND fingerprint = ?",
                (*part, fingerprint),
            ):
                out[key] = np.frombuffer(vec, dtype=np.float32)
        return out

    def put_features(self, items: dict[str, np.ndarray], fingerprint: str) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO features VALUES (?, ?, ?)",
                [
                    (k, fingerprint, np.ascontiguousarray(v, dtype=np.float32).tobytes())
                    for k, v in items.items()
                ],
            )

    # ---- purge ----------------------------------------------------------------------------

    def purge(self, rows: list[SampleRow], subject_ids: Iterable[str] = ()) -> None:
        """Erase samples: rows, cached features, object files; leave salted tombstones.

        O(the rows purged): ``secure_delete`` zeroes what is deleted in place, so the file is
        never rewritten whole. Idempotent: purging rows that are already gone is a no-op.
        """
        subjects = set(subject_ids)
        with self._tx() as db:
            for r in rows:
                db.execute("DELETE FROM samples WHERE sample_id = ?", (r.sample_id,))
                db.execute("DELETE FROM features WHERE key = ?", (r.key,))
                db.execute(
                    "INSERT OR IGNORE INTO tombstones VALUES (?, 'sample')",
                    (self._tomb("sample", r.sample_id),),
                )
            for subj in subjects:
                db.execute(
                    "INSERT OR IGNORE INTO tombstones VALUES (?, 'subject')",
                    (self._tomb("subject", subj),),
                )
            # In the same commit as the rows: a crash before the unlinks below leaves the
            # list, and the next open finishes them (``_recover``).
            self._note_unlinking(db, [r.key for r in rows])
        self._unlink([r.key for r in rows])

    def _note_unlinking(self, db: sqlite3.Connection, keys: list[str]) -> None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (_UNLINKING,)).fetchone()
        listed = set(json.loads(row[0])) if row else set()
        db.execute(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            (_UNLINKING, json.dumps(sorted(listed | set(keys)))),
        )

    def _unlink(self, keys: list[str]) -> None:
        """Unlink purged objects (``keys`` and any a crash left listed), then the list."""
        listed = json.loads(self.meta(_UNLINKING) or "[]")
        for key in sorted(set(listed) | set(keys)):
            (self.objects / key).unlink(missing_ok=True)
        fsync_dir(self.objects)
        with self._tx() as db:
            db.execute("DELETE FROM meta WHERE key = ?", (_UNLINKING,))
