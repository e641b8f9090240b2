"""What one deletion retrains: the expected share of the training data per random deletion.

A uniformly random training sample x is deleted alone. If x is not in the clustering sample,
only its own cluster is retrained: ``m_k - 1`` samples. If it is, the data is reclustered and
every cluster whose member set changed is retrained; ``Replay`` finds those clusters by
running the partition code on the remaining ids, exactly as ``forget`` and a fresh build do,
with the sample's distances and the routing columns shared between replays. The share is the
retrained samples over the ``N - 1`` that remain, so

    E[share] = ((N - S) * direct + S * recluster) / N

with ``direct`` the mean over non-sample deletions and ``recluster`` the mean over
sample deletions (every one of them, or a deterministic subset of ``evaluations``).

A forget that keeps the clustering (no sample point deleted) changes ``direct`` but hardly the
recluster terms, which need the costly replay: ``carried`` recomputes the direct terms on the
new partition and keeps the replayed ones until the training set has shrunk by
``REPLAY_DRIFT`` since they were measured. Pure numpy/scipy, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.spatial.distance import pdist, squareform

from .clustering import Partition, Router, assemble, cluster_sample, ranked
from .ids import rank
from .randomsplit import group_of, random_partition, shares_of

DEFAULT_EVALUATIONS = 64
"""Sample deletions replayed to estimate the recluster cost when the sample is larger."""


@dataclass(frozen=True)
class Rule:
    """How the data is partitioned: the dendrogram threshold or count, the cap, and the least
    number of sample points a cluster keeps; or, with ``method`` ``random``, ``n_clusters``
    groups of the given ``shares`` (``randomsplit.py``)."""

    distance_threshold: float | None
    n_clusters: int | None
    max_share: float | None = None
    min_points: int = 1
    method: str = "adaptive"
    shares: tuple[float, ...] | None = None

    def random_shares(self) -> np.ndarray:
        """The normalised group shares of a random rule."""
        assert self.method == "random" and self.n_clusters is not None
        return shares_of(self.n_clusters, self.shares)


@dataclass(frozen=True)
class RetrainCost:
    train: int
    sample: int
    clusters: int
    largest_share: float
    """The largest cluster's share of the training samples."""
    direct_share: float
    """Mean retrained share when a non-sample point is deleted: its own cluster."""
    p_recluster: float
    """``S / N``: the chance that a random deletion hits the clustering sample."""
    recluster_share: float
    """Mean retrained share when a sample point is deleted (the data is reclustered)."""
    recluster_share_se: float
    """Standard error of ``recluster_share``; 0 when every sample point was replayed."""
    recluster_clusters: float
    """Mean number of clusters a recluster retrains."""
    evaluated: int
    """Sample deletions replayed."""
    expected_retrain_share: float
    expected_compute_share: float
    """Expected retrain work (image-steps, each cluster at its own epochs) per random deletion,
    over the work of retraining one prompt on all the remaining data."""
    recluster_compute_share: float = 1.0
    """Mean retrain work of a recluster, over one prompt's work on the remaining data."""
    replayed_train: int = 0
    """Training samples when the recluster terms were replayed (``train`` unless carried)."""

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class Replay:
    """The partition code over one set of training ids, for many rules and many deletions.

    Pairwise distances of the sample (and of the point that enters it when a sample point is
    deleted) and each prototype's routing column are computed once and shared, so a replay
    costs one linkage and the routing of new prototypes. Every answer is bitwise what
    ``build_partition`` returns on the same ids.
    """

    def __init__(
        self, ids: list[str], features: dict[str, np.ndarray], seed: int, sample_size: int
    ):
        self.ids = list(ids)
        self.seed = seed
        order = ranked(self.ids, seed)
        self.sample = order[:sample_size]
        self.pool = order[: sample_size + 1]  # deleting a sample point brings in the next
        self.row = {i: r for r, i in enumerate(self.ids)}
        self.features = features
        self._groups: dict[Rule, dict[str, int]] = {}
        self.router = Router(np.stack([features[i] for i in self.ids]))
        self.x = np.stack([features[i] for i in self.pool]).astype(np.float32)
        self.pool_router = Router(self.x)
        self.dist = squareform(pdist(self.x.astype(np.float64)))

    def partition(self, rule: Rule, gone: str | None = None) -> Partition:
        """What a fresh build gives on the ids, or on the ids without ``gone``."""
        if rule.method == "random":
            shares = rule.random_shares()
            if rule not in self._groups:  # each id's group, hashed once per rule
                self._groups[rule] = dict(
                    zip(self.ids, group_of(self.ids, self.seed, shares).tolist())
                )
            ids = [i for i in self.ids if i != gone]
            return random_partition(
                ids, self.features, self.seed, len(self.sample), shares, self._groups[rule]
            )
        keep = [j for j, i in enumerate(self.pool) if i != gone][: len(self.sample)]
        sample = [self.pool[j] for j in keep]
        condensed = squareform(self.dist[np.ix_(keep, keep)], checks=False)
        clusters = cluster_sample(
            sample,
            self.x[keep],
            condensed,
            rule.distance_threshold,
            rule.n_clusters,
            rule.max_share,
            router=self.pool_router,
            sample_index=np.array(keep),
            min_points=rule.min_points,
        )
        chosen = set(sample)
        rest = [i for i in self.ids if i not in chosen and i != gone]
        index = np.array([self.row[i] for i in rest], dtype=np.int64)
        assigned: np.ndarray | list[int] = (
            self.router.nearest(clusters.prototypes, index) if rest else []
        )
        return assemble(sample, clusters, rest, assigned)

    def changed(self, rule: Rule, before: Partition, gone: str) -> list[int]:
        """Sizes of the clusters retrained when the sample point ``gone`` alone is deleted."""
        old = set(before.members)
        return [len(m) for m in self.partition(rule, gone).members if m not in old]

    def retrained(self, rule: Rule, before: Partition, gone: str) -> tuple[int, int]:
        """(samples, clusters) retrained when the sample point ``gone`` alone is deleted."""
        sizes = self.changed(rule, before, gone)
        return sum(sizes), len(sizes)

    def cost(
        self,
        rule: Rule,
        part: Partition | None = None,
        evaluations: int = DEFAULT_EVALUATIONS,
        progress: Callable[[int], object] | None = None,
        steps: Callable[[int], float] = float,
    ) -> RetrainCost:
        """The expected retrained share of a random single deletion from ``part`` (by
        default, the partition of ``rule``). ``steps(m)`` is the work of training a cluster
        of ``m`` samples (default ``m``: every cluster the same number of epochs)."""
        part = part if part is not None else self.partition(rule)
        n = len(self.ids)
        sizes = np.array(part.sizes(), dtype=np.float64)
        largest = float(sizes.max() / n)
        if n <= 1:
            return RetrainCost(
                n, n, len(sizes), largest, 1.0, 1.0, 1.0, 0.0, 1.0, 0, 1.0, 1.0, 1.0, n
            )
        d = _direct(part, steps)
        s, full = d.sample, steps(n - 1)
        points = evaluation_points(self.sample, self.seed, evaluations)
        shares, counts, works = [], [], []
        for x in points:
            changed = self.changed(rule, part, x)
            shares.append(sum(changed) / (n - 1))
            counts.append(len(changed))
            works.append(sum(steps(m) for m in changed))
            if progress is not None:
                progress(1)
        se = 0.0
        if 1 < len(points) < s:
            fpc = (s - len(points)) / (s - 1)
            se = float(np.std(shares, ddof=1) / math.sqrt(len(points)) * math.sqrt(fpc))
        return _combine(
            d,
            recluster_share=float(np.mean(shares)),
            recluster_share_se=se,
            recluster_clusters=float(np.mean(counts)),
            evaluated=len(points),
            recluster_compute_share=float(np.mean(works)) / full,
            replayed_train=n,
        )


REPLAY_DRIFT = 0.02
"""Carried recluster terms are replayed again once the training set has shrunk by this share
since they were measured."""


@dataclass(frozen=True)
class _Direct:
    train: int
    sample: int
    clusters: int
    largest_share: float
    direct_share: float
    direct_compute_share: float


def _direct(part: Partition, steps: Callable[[int], float]) -> _Direct:
    """The terms of a non-sample deletion, exact on ``part``."""
    in_sample = [sum(1 for i in m if i in part.sample) for m in part.members]
    return _direct_of(part.sizes(), in_sample, steps)


def _direct_of(
    cluster_sizes: Sequence[int], sample_counts: Sequence[int], steps: Callable[[int], float]
) -> _Direct:
    """``_direct`` from each cluster's size and clustering-sample count, in cluster order."""
    sizes = np.array(cluster_sizes, dtype=np.float64)
    n = int(sizes.sum())
    in_sample = np.array(sample_counts)
    s = int(in_sample.sum())
    outside = sizes - in_sample
    direct = float((outside * (sizes - 1)).sum() / ((n - s) * (n - 1))) if n > s else 0.0
    work = np.array([steps(int(m) - 1) if m > 1 else 0.0 for m in sizes])
    direct_work = float((outside * work).sum() / (n - s)) / steps(n - 1) if n > s else 0.0
    return _Direct(n, s, len(sizes), float(sizes.max() / n), direct, direct_work)


def _combine(d: _Direct, **recluster) -> RetrainCost:
    p = d.sample / d.train
    return RetrainCost(
        train=d.train,
        sample=d.sample,
        clusters=d.clusters,
        largest_share=d.largest_share,
        direct_share=d.direct_share,
        p_recluster=p,
        expected_retrain_share=(1 - p) * d.direct_share + p * recluster["recluster_share"],
        expected_compute_share=(1 - p) * d.direct_compute_share
        + p * recluster["recluster_compute_share"],
        **recluster,
    )


def carried(
    previous: Mapping, part: Partition, steps: Callable[[int], float] = float
) -> RetrainCost | None:
    """The cost of ``part`` after deletions that kept the clustering: direct terms exact, the
    recluster terms of ``previous`` (a ``to_dict``) kept. None when they must be replayed:
    ``previous`` predates them, or the data has shrunk by ``REPLAY_DRIFT`` since."""
    in_sample = [sum(1 for i in m if i in part.sample) for m in part.members]
    return carried_sizes(previous, part.sizes(), in_sample, steps)


def carried_sizes(
    previous: Mapping,
    sizes: Sequence[int],
    sample_counts: Sequence[int],
    steps: Callable[[int], float] = float,
) -> RetrainCost | None:
    """``carried`` from each cluster's size and clustering-sample count, in cluster order."""
    if "replayed_train" not in previous:
        return None
    d = _direct_of(sizes, sample_counts, steps)
    if d.train <= 1 or d.train < (1 - REPLAY_DRIFT) * previous["replayed_train"]:
        return None
    keys = (
        "recluster_share",
        "recluster_share_se",
        "recluster_clusters",
        "evaluated",
        "recluster_compute_share",
        "replayed_train",
    )
    return _combine(d, **{k: previous[k] for k in keys})


def evaluation_points(sample: list[str], seed: int, evaluations: int) -> list[str]:
    """Which sample deletions to replay: all, or a seeded, deletion-stable subset."""
    if len(sample) <= evaluations:
        return sorted(sample)
    return sorted(sample, key=lambda i: (rank(seed, "cost-eval", i), i))[:evaluations]
