"""Identifier hashing. Pure functions: no I/O, no global state.

Two kinds of hash, for two jobs:
- *seeded* hashes (``rank``, ``member_seed``) depend only on the config seed and raw ids, so a
  fresh build on the same data reproduces them anywhere;
- *keyed* hashes (``private_key``) use the per-state secret, so what is persisted (registry
  membership, tombstones, object names) never reveals an id to someone without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rank(seed: int, purpose: str, ident: str) -> str:
    """A deletion-stable pseudo-random rank: depends on nothing but (seed, purpose, id)."""
    return sha256_hex(f"{seed}\x1f{purpose}\x1f{ident}".encode())


def unit_interval(seed: int, purpose: str, ident: str) -> float:
    """``rank`` mapped to [0, 1)."""
    return int(rank(seed, purpose, ident)[:13], 16) / float(1 << 52)


def member_seed(seed: int, member_ids: Iterable[str]) -> int:
    """Training seed of one cluster: a function of the global seed and its own members only."""
    h = hashlib.sha256(f"{seed}\x1ftrain".encode())
    for ident in sorted(member_ids):
        h.update(b"\x1e" + ident.encode())
    return int(h.hexdigest()[:15], 16)


def cluster_key(sample_member_ids: Iterable[str]) -> str:
    """Stable cluster name: a hash of the clustering-sample points the cluster grew from."""
    h = hashlib.sha256(b"cluster")
    for ident in sorted(sample_member_ids):
        h.update(b"\x1e" + ident.encode())
    return "c" + h.hexdigest()[:15]


def private_key(secret: bytes, kind: str, ident: str) -> str:
    """Salted (keyed) hash of an id, safe to persist."""
    return hmac.new(secret, f"{kind}\x1f{ident}".encode(), hashlib.sha256).hexdigest()[:40]
