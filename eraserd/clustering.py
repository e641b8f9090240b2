"""Adaptive private-data clustering (paper, Algorithms 1 and 2). Pure numpy/scipy, no I/O.

Exactness hinges on three choices made here:
- the clustering sample is the ``sample_size`` ids of lowest seeded rank, so the sample of
  D minus D_u is exactly what a fresh build on D minus D_u would draw;
- hierarchical clustering sees the sample in rank order, and clusters are named by a hash of
  their sample members and ordered by that name, so keys and order never depend on history;
- routing is one function (``nearest``) in float64 with ties going to the first cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage

from .ids import cluster_key, rank


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


def clustering_sample(ids: list[str], seed: int, size: int) -> list[str]:
    """The ``size`` ids of lowest seeded rank, in rank order."""
    return sorted(ids, key=lambda i: (rank(seed, "cluster-sample", i), i))[:size]


def hac_labels(
    features: np.ndarray, distance_threshold: float | None, n_clusters: int | None
) -> np.ndarray:
    """Average-linkage clustering labels (0-based) for rows of ``features``."""
    n = features.shape[0]
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    z = linkage(features.astype(np.float64), method="average", metric="euclidean")
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
    return np.sort(linkage(features.astype(np.float64), method="average")[:, 2])


def nearest(features: np.ndarray, prototypes: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Index of the nearest prototype for each row; ties go to the lowest index.

    Each distance is an elementwise float64 reduction over one row, never a matrix product,
    so a row's answer cannot depend on which other rows are routed with it.
    """
    f = np.atleast_2d(features).astype(np.float64)
    p = prototypes.astype(np.float64)
    out = np.empty(f.shape[0], dtype=np.int64)
    for lo in range(0, f.shape[0], chunk):
        block = f[lo : lo + chunk]
        d = np.empty((block.shape[0], p.shape[0]))
        for k in range(p.shape[0]):
            d[:, k] = np.square(block - p[k]).sum(axis=1)
        out[lo : lo + chunk] = np.argmin(d, axis=1)
    return out


def build_partition(
    ids: list[str],
    features: dict[str, np.ndarray],
    seed: int,
    sample_size: int,
    distance_threshold: float | None,
    n_clusters: int | None,
) -> Partition:
    """Cluster the training ids from scratch (Algorithm 1)."""
    if not ids:
        raise ValueError("no training samples to cluster")
    sample = clustering_sample(ids, seed, sample_size)
    sample_feats = np.stack([features[i] for i in sample]).astype(np.float32)
    labels = hac_labels(sample_feats, distance_threshold, n_clusters)
    groups: dict[int, list[int]] = {}
    for row, lab in enumerate(labels.tolist()):
        groups.setdefault(lab, []).append(row)
    named = sorted((cluster_key(sample[r] for r in rows), rows) for rows in groups.values())
    keys = tuple(k for k, _ in named)
    protos = np.stack([sample_feats[rows].astype(np.float64).mean(0) for _, rows in named])
    protos = protos.astype(np.float32)
    members: list[list[str]] = [[sample[r] for r in rows] for _, rows in named]
    in_sample = set(sample)
    rest = [i for i in ids if i not in in_sample]
    if rest:
        assigned = nearest(np.stack([features[i] for i in rest]), protos)
        for sid, k in zip(rest, assigned.tolist()):
            members[k].append(sid)
    return Partition(keys, protos, tuple(tuple(sorted(m)) for m in members), frozenset(in_sample))


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
