"""Adaptive private-data clustering (paper, Algorithms 1 and 2). Pure numpy/scipy, no I/O.

Exactness hinges on three choices made here:
- the clustering sample is the ``sample_size`` ids of lowest seeded rank, so the sample of
  D minus D_u is exactly what a fresh build on D minus D_u would draw;
- hierarchical clustering sees the sample in rank order, and clusters are named by a hash of
  their sample members and ordered by that name, so keys and order never depend on history;
- assignment is one function (``nearest``) in float64 with ties going to the first cluster;
  inputs are routed by it or by a vote of their nearest training points (``Routing``), both
  per row, so an input's cluster never depends on what is routed with it.

Bounded clusters (``max_share``): after the dendrogram is cut, a cluster whose share is
estimated above the cap is replaced by its two children in the dendrogram, until none is.
The estimate uses the clustering sample alone (its share of the sample, and the share of the
sample that routes to its prototype), so the partition's structure never depends on
non-sample points: deleting one still touches only its own cluster, and a fresh build on the
remaining data reproduces the same structure. Clusters of fewer than ``min_points`` sample
points are then dissolved into the nearest clusters the cap allows, on the sample alone too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

from .ids import cluster_key, rank

ROUTE_CHUNK = 2048


@dataclass(frozen=True)
class Partition:
    keys: tuple[str, ...]
    """Cluster names, in canonical (sorted) order."""
    prototypes: np.ndarray
    """float32 [K, F]: mean feature of each cluster's sample members."""
    members: tuple[tuple[str, ...], ...]
    """Per cluster, the sorted sample ids of all its members."""
    sample: frozenset[str]
    """Ids in the clustering sample."""

    def cluster_of(self) -> dict[str, int]:
        return {sid: k for k, ids in enumerate(self.members) for sid in ids}

    def sizes(self) -> list[int]:
        return [len(m) for m in self.members]


def clustering_sample(ids: list[str], seed: int, size: int) -> list[str]:
    """The ``size`` ids of lowest seeded rank, in rank order."""
    return ranked(ids, seed)[:size]


def ranked(ids: list[str], seed: int) -> list[str]:
    """Every id in clustering-sample rank order."""
    return sorted(ids, key=lambda i: (rank(seed, "cluster-sample", i), i))


def hac_labels(
    features: np.ndarray, distance_threshold: float | None, n_clusters: int | None
) -> np.ndarray:
    """Average-linkage clustering labels (0-based) for rows of ``features``."""
    if features.shape[0] == 1:
        return np.zeros(1, dtype=np.int64)
    return _cut(_linkage(pdist(features.astype(np.float64))), distance_threshold, n_clusters)


def _linkage(condensed: np.ndarray) -> np.ndarray:
    return linkage(condensed, method="average")


def _cut(z: np.ndarray, distance_threshold: float | None, n_clusters: int | None) -> np.ndarray:
    if n_clusters is not None:
        labels = fcluster(z, t=n_clusters, criterion="maxclust")
    else:
        labels = fcluster(z, t=distance_threshold, criterion="distance")
    return labels.astype(np.int64) - 1


def merge_heights(features: np.ndarray) -> np.ndarray:
    """Average-linkage merge distances, ascending: at threshold t there are
    ``1 + sum(heights > t)`` clusters. Used to pick a threshold for a new backbone."""
    if features.shape[0] < 2:
        return np.zeros(0)
    return np.sort(_linkage(pdist(features.astype(np.float64)))[:, 2])


# ---- routing ------------------------------------------------------------------------------


def sq_distances(rows: np.ndarray, proto: np.ndarray, chunk: int = ROUTE_CHUNK) -> np.ndarray:
    """Squared distance of each float64 row to one float64 prototype.

    Each value is an elementwise reduction over one row, never a matrix product, so a row's
    distance cannot depend on which other rows are computed with it.
    """
    out = np.empty(rows.shape[0])
    buf = np.empty((min(chunk, rows.shape[0]), rows.shape[1]))
    for lo in range(0, rows.shape[0], chunk):
        block = rows[lo : lo + chunk]
        diff = np.subtract(block, proto, out=buf[: block.shape[0]])
        out[lo : lo + chunk] = np.square(diff, out=diff).sum(axis=1)
    return out


def nearest(features: np.ndarray, prototypes: np.ndarray, chunk: int = ROUTE_CHUNK) -> np.ndarray:
    """Index of the nearest prototype for each row; ties go to the lowest index."""
    f = np.atleast_2d(features).astype(np.float64)
    p = prototypes.astype(np.float64)
    out = np.empty(f.shape[0], dtype=np.int64)
    for lo in range(0, f.shape[0], chunk):
        block = f[lo : lo + chunk]
        d = np.empty((block.shape[0], p.shape[0]))
        for k in range(p.shape[0]):
            d[:, k] = sq_distances(block, p[k], chunk)
        out[lo : lo + chunk] = np.argmin(d, axis=1)
    return out


class Router:
    """``nearest`` over a fixed set of rows, with each prototype's distance column kept.

    Partitions that share prototypes (the steps of the cap, a recluster replay) then pay
    only for new prototypes. Answers are bitwise those of ``nearest``.
    """

    def __init__(self, rows: np.ndarray):
        self.rows = np.atleast_2d(rows).astype(np.float64)
        self._columns: dict[bytes, np.ndarray] = {}

    def column(self, proto: np.ndarray) -> np.ndarray:
        key = np.asarray(proto, dtype=np.float32).tobytes()
        col = self._columns.get(key)
        if col is None:
            col = sq_distances(self.rows, np.asarray(proto).astype(np.float64))
            self._columns[key] = col
        return col

    def nearest(self, prototypes: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        cols = [self.column(p) for p in prototypes]
        d = np.stack(cols, axis=1)
        return np.argmin(d if index is None else d[index], axis=1)


def vote(
    features: np.ndarray,
    points: np.ndarray,
    owner: np.ndarray,
    k: int,
    allowed: Sequence[int] | None = None,
) -> np.ndarray:
    """Cluster of each row by a vote of its ``k`` nearest ``points``, each voting for its
    ``owner``; a tie goes to the tied cluster of the nearest voter. ``allowed`` limits the
    voters to those clusters. Distances are ``sq_distances`` per row, so a row's answer never
    depends on the other rows; equal distances go to the lower point index."""
    f = np.atleast_2d(features).astype(np.float64)
    pts = np.asarray(points, dtype=np.float64)  # no copy when the caller keeps float64
    own = np.asarray(owner, dtype=np.int64)
    if allowed is not None:
        keep = np.isin(own, np.asarray(list(allowed), dtype=np.int64))
        pts, own = pts[keep], own[keep]
    if own.size == 0:
        raise ValueError("no routing points to vote")
    k = min(k, own.size)
    out = np.empty(f.shape[0], dtype=np.int64)
    for r in range(f.shape[0]):
        voters = own[np.argsort(sq_distances(pts, f[r]), kind="stable")[:k]]
        counts = np.bincount(voters)
        best = counts.max()
        out[r] = next(c for c in voters.tolist() if counts[c] == best)
    return out


@dataclass(frozen=True)
class Routing:
    """How an input picks its cluster: the nearest prototype, or, when ``points`` is set, a
    vote of its ``neighbors`` nearest routing points (``routing_points``)."""

    prototypes: np.ndarray
    points: np.ndarray | None = None
    """[M, F] routing points, in cluster order: float32 as stored, or float64 (the values
    widened once, as a server keeps them, so that routing an input copies nothing)."""
    owner: np.ndarray | None = None
    """int64 [M]: the cluster of each routing point."""
    neighbors: int = 1

    def route(self, features: np.ndarray, allowed: Sequence[int] | None = None) -> np.ndarray:
        """Cluster index of each row of ``features``, among ``allowed`` clusters if given."""
        if self.points is None:
            if allowed is None:
                return nearest(features, self.prototypes)
            idx = np.asarray(list(allowed), dtype=np.int64)
            return idx[nearest(features, self.prototypes[idx])]
        assert self.owner is not None  # set together with points
        return vote(features, self.points, self.owner, self.neighbors, allowed)


def routing_points(
    part: Partition, features: dict[str, np.ndarray], seed: int, per_cluster: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """The training points that vote when routing by neighbors, and their clusters: each
    cluster's members (those of lowest seeded rank, up to ``per_cluster``), in cluster and
    then id order. A pure function of the partition, so a from-scratch build on the same data
    stores the same points, and a forgotten sample is never among them."""
    rows: list[np.ndarray] = []
    owner: list[int] = []
    for k, members in enumerate(part.members):
        chosen = chosen_points(members, seed, per_cluster)
        rows.extend(features[i] for i in chosen)
        owner.extend([k] * len(chosen))
    return np.stack(rows).astype(np.float32), np.asarray(owner, dtype=np.int64)


def chosen_points(members: Sequence[str], seed: int, per_cluster: int | None) -> tuple[str, ...]:
    """One cluster's routing points: its members of lowest seeded rank, up to
    ``per_cluster`` (all when None), in id order. Depends on that cluster's members only."""
    chosen = sorted(members)
    if per_cluster is not None and len(chosen) > per_cluster:
        ranked_ids = sorted(chosen, key=lambda i: (rank(seed, "routing-point", i), i))
        chosen = sorted(ranked_ids[:per_cluster])
    return tuple(chosen)


# ---- the partition ------------------------------------------------------------------------


def _flat_nodes(z: np.ndarray, labels: np.ndarray) -> list[int]:
    """The dendrogram nodes whose leaves are exactly the flat clusters of ``labels``."""
    n = labels.shape[0]
    uniform = np.empty(2 * n - 1, dtype=np.int64)
    uniform[:n] = labels
    for i, (a, b) in enumerate(z[:, :2].astype(np.int64)):
        uniform[n + i] = uniform[a] if uniform[a] == uniform[b] else -1
    out, stack = [], [2 * n - 2]
    while stack:
        node = stack.pop()
        if uniform[node] >= 0:
            out.append(node)
        else:
            stack.extend(int(c) for c in z[node - n, :2])
    return out


def _leaves(z: np.ndarray, n: int, node: int) -> list[int]:
    out, stack = [], [node]
    while stack:
        v = stack.pop()
        if v < n:
            out.append(v)
        else:
            stack.extend(int(c) for c in z[v - n, :2])
    return sorted(out)


@dataclass(frozen=True)
class SampleClusters:
    """The clustered sample: each cluster's sample rows, key and prototype, in key order."""

    keys: tuple[str, ...]
    rows: tuple[tuple[int, ...], ...]
    prototypes: np.ndarray


def _name(sample: Sequence[str], x: np.ndarray, groups: list[list[int]]) -> SampleClusters:
    named = sorted((cluster_key(sample[r] for r in rows), rows) for rows in groups)
    protos = np.stack([x[rows].astype(np.float64).mean(0) for _, rows in named])
    return SampleClusters(
        tuple(k for k, _ in named),
        tuple(tuple(rows) for _, rows in named),
        protos.astype(np.float32),
    )


CAP_MARGIN_SE = 2.0
"""The cap holds on a cluster's share estimated from the sample plus this many standard
errors, so that its share of all the data stays under the cap."""


def upper_share(count: int, n: int) -> float:
    """Upper bound of a cluster's share of the data, from ``count`` of ``n`` sample points."""
    p = count / n
    return p + CAP_MARGIN_SE * math.sqrt(p * (1 - p) / n)


def _absorb(
    groups: list[tuple[int, ...]],
    min_points: int,
    max_share: float | None,
    x: np.ndarray,
    sample: Sequence[str],
    router: Router,
    sample_index: np.ndarray | None,
) -> list[list[int]]:
    """Dissolve every group of fewer than ``min_points`` rows: each of its rows, in rank
    order, joins the nearest larger group (by the mean of that group's own rows) that stays
    within the cap with it. A row that fits nowhere stays with its group."""
    n = x.shape[0]
    keyed = sorted((cluster_key(sample[r] for r in rows), rows) for rows in groups)
    big = [list(rows) for _, rows in keyed if len(rows) >= min_points]
    small = sorted(r for _, rows in keyed if len(rows) < min_points for r in rows)
    if not big or not small:
        return [list(rows) for rows in groups]
    protos = np.stack([x[rows].astype(np.float64).mean(0) for rows in big]).astype(np.float32)
    index = np.array(small) if sample_index is None else sample_index[small]
    d = np.stack([router.column(p) for p in protos], axis=1)[index]
    left: dict[tuple[int, ...], list[int]] = {}
    home = {r: rows for _, rows in keyed if len(rows) < min_points for r in rows}
    for r, dist in zip(small, d):
        for k in np.argsort(dist, kind="stable").tolist():
            if max_share is None or upper_share(len(big[k]) + 1, n) <= max_share:
                big[k].append(r)
                break
        else:
            left.setdefault(home[r], []).append(r)
    return [sorted(rows) for rows in big] + list(left.values())


def cluster_sample(
    sample: Sequence[str],
    x: np.ndarray,
    condensed: np.ndarray,
    distance_threshold: float | None,
    n_clusters: int | None,
    max_share: float | None,
    router: Router | None = None,
    sample_index: np.ndarray | None = None,
    min_points: int = 1,
) -> SampleClusters:
    """Average-linkage clusters of the sample (rows of ``x``, in rank order), each cluster
    over the cap replaced by its two children in the dendrogram until none is over; then
    each cluster of fewer than ``min_points`` sample points dissolved into its neighbours.

    A cluster is over the cap when more than ``max_share`` of the sample either belongs to
    it or routes to its prototype (the second estimates its share of the non-sample points).
    A single sample point is never split. A dissolved cluster's points join, one by one, the
    nearest cluster that the cap allows. ``condensed`` is ``pdist(x)``; ``router`` may supply
    cached routing, with ``sample_index`` naming the rows of ``x`` in it.
    """
    n = x.shape[0]
    if n == 1:
        return _name(sample, x, [[0]])
    z = _linkage(condensed)
    nodes = _flat_nodes(z, _cut(z, distance_threshold, n_clusters))
    if router is None:
        router, sample_index = Router(x), None
    while True:
        leaves = [_leaves(z, n, node) for node in nodes]
        named = _name(sample, x, leaves)
        if max_share is None:
            break
        routed = np.bincount(router.nearest(named.prototypes, sample_index), minlength=len(nodes))
        over = {
            rows
            for rows, hits in zip(named.rows, routed)
            if len(rows) > 1 and upper_share(max(len(rows), int(hits)), n) > max_share
        }
        if not over:
            break
        split = [node for node, rows in zip(nodes, leaves) if tuple(rows) in over]
        nodes = [v for v in nodes if v not in split] + [int(c) for v in split for c in z[v - n, :2]]
    if min_points <= 1:
        return named
    return _name(
        sample, x, _absorb(list(named.rows), min_points, max_share, x, sample, router, sample_index)
    )


def build_partition(
    ids: list[str],
    features: dict[str, np.ndarray],
    seed: int,
    sample_size: int,
    distance_threshold: float | None,
    n_clusters: int | None,
    max_share: float | None = None,
    min_points: int = 1,
) -> Partition:
    """Cluster the training ids from scratch (Algorithm 1), with clusters bounded by
    ``max_share`` of the sample's estimate when it is set, and clusters of fewer than
    ``min_points`` sample points dissolved into their nearest neighbours."""
    if not ids:
        raise ValueError("no training samples to cluster")
    sample = clustering_sample(ids, seed, sample_size)
    x = np.stack([features[i] for i in sample]).astype(np.float32)
    clusters = cluster_sample(
        sample,
        x,
        pdist(x.astype(np.float64)),
        distance_threshold,
        n_clusters,
        max_share,
        min_points=min_points,
    )
    in_sample = set(sample)
    rest = [i for i in ids if i not in in_sample]
    assigned: np.ndarray | list[int] = (
        nearest(np.stack([features[i] for i in rest]), clusters.prototypes) if rest else []
    )
    return assemble(sample, clusters, rest, assigned)


def assemble(
    sample: Sequence[str], clusters: SampleClusters, rest: Sequence[str], assigned
) -> Partition:
    """A partition from the clustered sample and each other point's assigned cluster."""
    members: list[list[str]] = [[sample[r] for r in rows] for rows in clusters.rows]
    for sid, k in zip(rest, np.asarray(assigned).tolist()):
        members[k].append(sid)
    return Partition(
        clusters.keys,
        clusters.prototypes,
        tuple(tuple(sorted(m)) for m in members),
        frozenset(sample),
    )


def remove_members(part: Partition, removed: set[str]) -> Partition:
    """Drop non-sample ids from a partition: prototypes and keys stay as they are."""
    if removed & part.sample:
        raise ValueError("removing clustering-sample points requires reclustering")
    return Partition(
        part.keys,
        part.prototypes,
        tuple(tuple(i for i in m if i not in removed) for m in part.members),
        part.sample,
    )
