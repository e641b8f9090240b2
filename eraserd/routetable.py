"""Where each held-out sample routes, kept per version so that a forget re-routes only what
it changed. Pure numpy: no I/O.

Routing by neighbors (``clustering.vote``) sends an input to the cluster that most of its
``k`` nearest routing points belong to. Routing every held-out sample again on each forget
costs O(test x points x features). The table keeps, for each held-out sample, its ``depth``
nearest routing points (``depth`` > ``k``) in one total order, ``(distance, cluster position,
point key)``, together with the cluster it routes to.

Invariant: a row's list is exactly the first ``count`` routing points of the version in that
order. It survives both changes a forget without reclustering makes:

- a removed point leaves every list that holds it, and what remains is still a prefix;
- an added point enters a list iff it comes before the list's last entry (then the list plus
  the point is a prefix one longer), and otherwise leaves it a prefix as it was.

A row whose list falls below ``k`` entries is computed again from all points. Its route is the
vote of its first ``k`` entries. That is ``vote`` exactly: points of one cluster vote alike,
so only ``(distance, cluster position)`` decides the voters and their order, and the cluster
positions of a version that kept its clustering do not change. Distances are
``clustering.sq_distances`` per row, the values ``vote`` computes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .clustering import sq_distances

KEY_BYTES = 20
"""A store key is 40 hex digits (``ids.private_key``)."""


def key_bytes(keys: Iterable[str]) -> np.ndarray:
    """Store keys as a ``S20`` array: byte order is hex order, so sorting agrees."""
    out = np.array([bytes.fromhex(k) for k in keys], dtype=f"S{KEY_BYTES}")
    return out


def key_strings(keys: np.ndarray) -> list[str]:
    return [bytes(k).ljust(KEY_BYTES, b"\0").hex() for k in keys.tolist()]


@dataclass(frozen=True)
class Points:
    """All routing points of a version, in cluster order."""

    features: np.ndarray
    """float64 [M, F]."""
    pos: np.ndarray
    """int64 [M]: the cluster position of each point."""
    keys: np.ndarray
    """S20 [M]: the store key of each point."""


@dataclass(frozen=True)
class Table:
    keys: np.ndarray
    """S20 [T]: the held-out samples, in key order."""
    route: np.ndarray
    """int64 [T]: the cluster position each routes to."""
    dist: np.ndarray
    """float64 [T, depth]: squared distance of each listed point (``inf`` past ``count``)."""
    pos: np.ndarray
    """int64 [T, depth]: the listed points' cluster positions (-1 past ``count``)."""
    point: np.ndarray
    """S20 [T, depth]: the listed points' keys (empty past ``count``)."""
    count: np.ndarray
    """int64 [T]: how many entries of each list are valid."""

    @property
    def depth(self) -> int:
        return int(self.dist.shape[1])

    def routes(self) -> dict[str, np.ndarray]:
        """Where each held-out sample routes: what a version is, and what a rebuild on the
        same data reproduces bit for bit (keys as uint8, for a safetensors blob)."""
        return {"keys": as_u8(self.keys), "route": self.route.astype(np.int64)}

    def lists(self) -> dict[str, np.ndarray]:
        """The nearest-point lists: an index that only speeds up the next forget. A list
        that lost points to deletions is shorter than a rebuild's, so versions are compared
        without it."""
        return {
            "dist": self.dist,
            "pos": self.pos.astype(np.int64),
            "point": as_u8(self.point),
            "count": self.count.astype(np.int64),
        }

    @classmethod
    def from_arrays(cls, routes: dict[str, np.ndarray], lists: dict[str, np.ndarray]) -> Table:
        return cls(
            keys=as_s20(routes["keys"]),
            route=np.asarray(routes["route"], dtype=np.int64),
            dist=np.asarray(lists["dist"], dtype=np.float64),
            pos=np.asarray(lists["pos"], dtype=np.int64),
            point=as_s20(lists["point"]),
            count=np.asarray(lists["count"], dtype=np.int64),
        )

    def routed(self) -> dict[int, list[str]]:
        """Cluster position -> the keys of the held-out samples it receives, sorted."""
        out: dict[int, list[str]] = {}
        for key, k in zip(key_strings(self.keys), self.route.tolist()):
            out.setdefault(k, []).append(key)
        return out


def depth_for(k: int) -> int:
    """How many points a row lists for ``k`` votes: ``k`` removals of its listed points pass
    before the row is computed again from all points."""
    return 2 * k


def as_u8(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=f"S{KEY_BYTES}")
    return a.view(np.uint8).reshape(*a.shape, KEY_BYTES)


def as_s20(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(a, dtype=np.uint8))
    return a.view(f"S{KEY_BYTES}").reshape(a.shape[:-1])


Entries = tuple[np.ndarray, np.ndarray, np.ndarray]
"""A row's listed points: distances, cluster positions, keys."""


def nearest_entries(feature: np.ndarray, points: Points, depth: int) -> Entries:
    """The first ``depth`` points for one float64 row: distances, positions, keys."""
    d = sq_distances(points.features, feature)
    n = min(depth, d.shape[0])
    if n == 0:
        return np.empty(0), np.empty(0, dtype=np.int64), np.empty(0, dtype=f"S{KEY_BYTES}")
    cut = np.partition(d, n - 1)[n - 1]
    cand = np.flatnonzero(d <= cut)  # every point that can be among the first n
    order = cand[np.lexsort((points.keys[cand], points.pos[cand], d[cand]))][:n]
    return d[order], points.pos[order], points.keys[order]


def lists_are_prefixes(short: Table, full: Table) -> bool:
    """Each row of ``short`` lists a prefix of the same row of ``full`` (the same held-out
    samples): what a table updated through deletions keeps of a rebuilt one (the invariant
    in the module docstring)."""
    if not np.array_equal(short.keys, full.keys):
        return False
    for r in range(len(short.keys)):
        n = int(short.count[r])
        for a, b in ((short.dist, full.dist), (short.pos, full.pos), (short.point, full.point)):
            if not np.array_equal(a[r, :n], b[r, :n]):
                return False
    return True


def vote_of(pos: np.ndarray, k: int) -> int:
    """The cluster a list's first ``k`` voters elect: most votes, ties to the nearest."""
    voters = pos[:k]
    counts = np.bincount(voters)
    best = counts.max()
    return next(c for c in voters.tolist() if counts[c] == best)


def empty(n: int, depth: int) -> Table:
    return Table(
        keys=np.zeros(n, dtype=f"S{KEY_BYTES}"),
        route=np.zeros(n, dtype=np.int64),
        dist=np.full((n, depth), np.inf),
        pos=np.full((n, depth), -1, dtype=np.int64),
        point=np.zeros((n, depth), dtype=f"S{KEY_BYTES}"),
        count=np.zeros(n, dtype=np.int64),
    )


def build(keys: np.ndarray, features: np.ndarray, points: Points, k: int, depth: int) -> Table:
    """The table of held-out samples ``keys`` (S20, key order) with float rows ``features``."""
    if depth < k:
        raise ValueError(f"a table of depth {depth} cannot vote {k} neighbors")
    t = empty(len(keys), depth)
    t.keys[:] = keys
    f = np.atleast_2d(np.asarray(features, dtype=np.float64))
    for r in range(len(keys)):
        _fill(t, r, f[r], points, k)
    return t


def _fill(t: Table, r: int, feature: np.ndarray, points: Points, k: int) -> None:
    _put(t, r, nearest_entries(feature, points, t.depth))
    n = int(t.count[r])
    if n == 0:
        raise ValueError("no routing points to vote")
    t.route[r] = vote_of(t.pos[r, :n], min(k, n))


def _put(t: Table, r: int, entries: Entries) -> None:
    d, pos, pk = entries
    n = d.shape[0]
    t.dist[r] = np.inf
    t.pos[r] = -1
    t.point[r] = b""
    t.dist[r, :n], t.pos[r, :n], t.point[r, :n] = d, pos, pk
    t.count[r] = n


@dataclass(frozen=True)
class Added:
    """Routing points a forget adds: positions, keys and their distances to each row."""

    pos: np.ndarray
    keys: np.ndarray
    dist: np.ndarray
    """float64 [A, T]: ``sq_distances`` of each row of the updated table to each point."""


def update(
    old: Table,
    k: int,
    drop_rows: Iterable[str],
    removed: Iterable[str],
    added: Callable[[np.ndarray], Added] | None,
    total_points: int,
    recompute: Callable[[np.ndarray], list[Entries]],
) -> tuple[Table, np.ndarray]:
    """The table after a forget that kept the clustering.

    ``drop_rows`` are deleted held-out samples, ``removed`` the keys of routing points that
    are gone, ``added(keys)`` gives the new points and their distances to the rows ``keys``.
    ``total_points`` is how many routing points the new version has. Rows left with fewer
    than ``min(k, total_points)`` entries are computed again: ``recompute(keys)`` returns each
    such row's ``nearest_entries`` over all points of the new version.

    Returns the new table and a boolean mask of its rows whose list changed.
    """
    keep = ~np.isin(old.keys, key_bytes(drop_rows))
    t = Table(
        keys=old.keys[keep].copy(),
        route=old.route[keep].copy(),
        dist=old.dist[keep].copy(),
        pos=old.pos[keep].copy(),
        point=old.point[keep].copy(),
        count=old.count[keep].copy(),
    )
    touched = np.zeros(len(t.keys), dtype=bool)
    gone = key_bytes(removed)
    if gone.size:
        hit = np.isin(t.point, gone)
        for r in np.flatnonzero(hit.any(axis=1)).tolist():
            stay = ~hit[r, : t.count[r]]
            n = int(stay.sum())
            for arr, pad in ((t.dist, np.inf), (t.pos, -1), (t.point, b"")):
                kept = arr[r, : t.count[r]][stay]
                arr[r] = pad
                arr[r, :n] = kept
            t.count[r] = n
            touched[r] = True
    if added is not None:
        new = added(t.keys)
        for a in range(len(new.keys)):
            _insert(t, new.pos[a], new.keys[a], new.dist[a], touched)
    need = min(k, total_points)
    short = np.flatnonzero(t.count < need)
    if short.size:
        for r, entries in zip(short.tolist(), recompute(t.keys[short])):
            _put(t, r, entries)
            touched[r] = True
    for r in np.flatnonzero(touched).tolist():
        if t.count[r]:
            t.route[r] = vote_of(t.pos[r, : t.count[r]], min(k, int(t.count[r])))
    return t, touched


def _insert(t: Table, pos: int, key: bytes, dist: np.ndarray, touched: np.ndarray) -> None:
    """Enter one point into every list whose last entry it precedes."""
    rows = np.flatnonzero(t.count > 0)
    last = t.count[rows] - 1
    ld, lp, lk = t.dist[rows, last], t.pos[rows, last], t.point[rows, last]
    d = dist[rows]
    before = (d < ld) | ((d == ld) & ((pos < lp) | ((pos == lp) & (key < lk))))
    for r in rows[before].tolist():
        n = int(t.count[r])
        me = (float(dist[r]), int(pos), key)
        # Its place: after every valid entry that precedes it (entries are distinct points).
        at = sum(
            1
            for i in range(n)
            if (float(t.dist[r, i]), int(t.pos[r, i]), bytes(t.point[r, i])) < me
        )
        m = min(n + 1, t.depth)
        for arr, value in ((t.dist, me[0]), (t.pos, me[1]), (t.point, key)):
            row = np.concatenate([arr[r, :at], np.array([value], dtype=arr.dtype), arr[r, at:n]])
            arr[r, :m] = row[:m]
        t.count[r] = m
        touched[r] = True
