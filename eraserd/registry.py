"""Versioned prompt/head registry: content-addressed blobs, JSON manifests, atomic CURRENT.

Layout under ``state_dir/registry``::

    blobs/ab/abcdef....bin   content-addressed by sha256 (safetensors or JSON)
    versions/000001.json     one manifest per version
    CURRENT                  "<version> <sha256 of that manifest file>"

Every read re-hashes what it reads and refuses a mismatch with ``CorruptBlobError``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import CorruptBlobError, RegistryError
from .fsutil import atomic_write, fsync_dir
from .ids import sha256_hex
from .manifest import Manifest

_VERSION_FILE = re.compile(r"^(\d{6,})\.json$")


class Registry:
    def __init__(self, state_dir: Path):
        self.root = Path(state_dir) / "registry"
        self.blobs = self.root / "blobs"
        self.versions = self.root / "versions"
        self._verified: dict[str, tuple[int, int, int, int]] = {}
        """Blobs known intact: digest -> the file's stat signature when they were."""

    def _ensure(self) -> None:
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.versions.mkdir(parents=True, exist_ok=True)

    # ---- blobs ----------------------------------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        return self.blobs / digest[:2] / f"{digest}.bin"

    def put_blob(self, data: bytes) -> str:
        self._ensure()
        digest = sha256_hex(data)
        path = self._blob_path(digest)
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            atomic_write(path, data)
        self._seen(digest, path)
        return digest

    def _seen(self, digest: str, path: Path) -> None:
        """Remember that ``path`` held ``digest``'s bytes, as of its current stat."""
        try:
            self._verified[digest] = _signature(path)
        except FileNotFoundError:
            self._verified.pop(digest, None)

    def check_blob(self, digest: str, what: str = "blob") -> None:
        """Raise ``CorruptBlobError`` unless the blob is present and intact. A blob this
        registry object wrote or read intact is not hashed again while its file's size,
        mtime and inode are unchanged; any rewrite of the file is hashed again."""
        path = self._blob_path(digest)
        try:
            if self._verified.get(digest) == _signature(path):
                return
        except FileNotFoundError:
            pass
        self.get_blob(digest, what)

    def get_blob(self, digest: str, what: str = "blob") -> bytes:
        path = self._blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptBlobError(
                f"{what}: blob {digest[:12]} is missing from {self.blobs}"
            ) from None
        if sha256_hex(data) != digest:
            raise CorruptBlobError(
                f"{what}: blob {digest[:12]} is corrupt (hash mismatch in {path})"
            )
        self._seen(digest, path)
        return data

    def put_tensors(self, tensors: dict[str, torch.Tensor]) -> str:
        return self.put_blob(st_save({k: v.contiguous() for k, v in tensors.items()}))

    def get_tensors(self, digest: str, what: str = "tensors") -> dict[str, torch.Tensor]:
        return st_load(self.get_blob(digest, what))

    def put_json(self, obj) -> str:
        return self.put_blob(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())

    def get_json(self, digest: str, what: str = "json"):
        return json.loads(self.get_blob(digest, what))

    # ---- versions -------------------------------------------------------------------------

    def _version_path(self, version: int) -> Path:
        return self.versions / f"{version:06d}.json"

    def list_versions(self) -> list[int]:
        if not self.versions.exists():
            return []
        return sorted(
            int(m.group(1)) for p in self.versions.iterdir() if (m := _VERSION_FILE.match(p.name))
        )

    def next_version(self) -> int:
        known = self.list_versions()
        cur = self.current()
        return max(known + ([cur[0]] if cur else []) + [0]) + 1

    def write_version(self, manifest: Manifest) -> str:
        """Write a version manifest (not yet current); returns its file hash."""
        self._ensure()
        data = json.dumps(manifest.to_dict(), sort_keys=True, indent=1).encode()
        atomic_write(self._version_path(manifest.version), data)
        return sha256_hex(data)

    def current(self) -> tuple[int, str] | None:
        path = self.root / "CURRENT"
        if not path.exists():
            return None
        parts = path.read_text().split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise RegistryError(f"{path}: malformed CURRENT pointer")
        return int(parts[0]), parts[1]

    def swap(self, version: int, manifest_sha: str) -> None:
        """Atomically make ``version`` current."""
        atomic_write(self.root / "CURRENT", f"{version} {manifest_sha}\n".encode())

    def load(self, version: int | None = None) -> Manifest:
        """Load a manifest (CURRENT by default), verifying its hash against CURRENT."""
        cur = self.current()
        if version is None:
            if cur is None:
                raise RegistryError(f"no model yet in {self.root}: run `eraserd build` first")
            version = cur[0]
        path = self._version_path(version)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise RegistryError(f"version {version} is missing: {path}") from None
        if cur is not None and cur[0] == version and sha256_hex(data) != cur[1]:
            raise CorruptBlobError(
                f"version {version} manifest is corrupt (hash mismatch with CURRENT in {path})"
            )
        return Manifest.from_dict(json.loads(data), where=str(path))

    # ---- garbage collection ---------------------------------------------------------------

    def collect(self, keep: Manifest) -> int:
        """Delete every version but ``keep`` and every blob it does not reference."""
        self._ensure()
        removed = 0
        for v in self.list_versions():
            if v != keep.version:
                self._version_path(v).unlink()
                removed += 1
        for tmp in list(self.versions.glob(".*.tmp*")) + list(self.blobs.glob("*/.*.tmp*")):
            tmp.unlink(missing_ok=True)
        refs = keep.blobs()
        for path in self.blobs.glob("*/*.bin"):
            if path.stem not in refs:
                path.unlink()
                removed += 1
        for sub in self.blobs.iterdir():
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()
        fsync_dir(self.versions)
        return removed


def _signature(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
