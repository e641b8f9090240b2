"""Random partitioning (``clustering.method: random``): the baseline adaptive clustering is
measured against (paper, Fig. 8), and a setting a deployment may choose. Pure, no I/O.

Each training sample's group is a function of the seed and its own id alone: its seeded
value in [0, 1) (``ids.unit_interval``) placed on the groups' cumulative shares. Deleting a
sample therefore changes its own group only, and a fresh build on the remaining data draws
the same groups: unlearning stays exact and retrains one group per deletion, even when the
deleted sample was in the clustering sample.

Groups are named by their index (``group_key``), not by their members. A group's prototype
(for ``routing.method: prototype``) is the mean feature of its sample points, as an adaptive
cluster's is: its members in the clustering sample, or, for a group with none, its member of
lowest seeded rank, which then counts as a sample point too. Either way a prototype changes
only when a sample point is deleted, which takes the recluster path (and, here, still
retrains one group). A group with no member at all is left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .clustering import Partition, ranked
from .ids import sha256_hex, unit_interval

PURPOSE = "random group"


def shares_of(n_groups: int, shares: Sequence[float] | None) -> np.ndarray:
    """The groups' shares, normalised to sum to 1: equal without ``shares``."""
    w = np.ones(n_groups) if shares is None else np.asarray(shares, dtype=np.float64)
    if w.shape != (n_groups,) or not np.all(w > 0):
        raise ValueError(f"shares must be {n_groups} positive numbers")
    return w / w.sum()


def group_of(ids: Sequence[str], seed: int, shares: np.ndarray) -> np.ndarray:
    """Each id's group index: its seeded unit-interval value on the cumulative shares."""
    edges = np.cumsum(shares)
    u = np.array([unit_interval(seed, PURPOSE, i) for i in ids], dtype=np.float64)
    return np.minimum(np.searchsorted(edges, u, side="right"), len(shares) - 1)


def group_key(index: int) -> str:
    """A group's name: a function of its index alone, in the format of cluster keys."""
    return "c" + sha256_hex(f"{PURPOSE}\x1f{index}".encode())[:15]


def random_partition(
    ids: list[str],
    features: Mapping[str, np.ndarray],
    seed: int,
    sample_size: int,
    shares: np.ndarray,
    groups: Mapping[str, int] | None = None,
) -> Partition:
    """The random partition of ``ids`` into ``len(shares)`` groups; ``groups`` may supply
    each id's group (``group_of``), computed once for many calls."""
    if not ids:
        raise ValueError("no training samples to partition")
    if groups is None:
        groups = dict(zip(ids, group_of(ids, seed, shares).tolist()))
    k = len(shares)
    order = ranked(ids, seed)
    members: list[list[str]] = [[] for _ in range(k)]
    for i in ids:
        members[groups[i]].append(i)
    points: list[list[str]] = [[] for _ in range(k)]
    for i in order[:sample_size]:
        points[groups[i]].append(i)
    lacking = {g for g in range(k) if members[g] and not points[g]}
    for i in order[sample_size:]:  # each such group's member of lowest rank stands in
        if not lacking:
            break
        if groups[i] in lacking:
            points[groups[i]].append(i)
            lacking.discard(groups[i])
    used = sorted((g for g in range(k) if members[g]), key=group_key)
    protos = np.stack(
        [np.stack([features[i] for i in points[g]]).astype(np.float64).mean(0) for g in used]
    )
    return Partition(
        tuple(group_key(g) for g in used),
        protos.astype(np.float32),
        tuple(tuple(sorted(members[g])) for g in used),
        frozenset(i for g in used for i in points[g]),
    )
