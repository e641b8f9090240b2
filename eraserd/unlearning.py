"""What a deletion changes: LMEraser's unlearning decision, with no I/O.

Given the current partition, the training samples to delete and the clustering settings,
``decide`` says what is gone, whether the data must be reclustered, the new partition, and
which of its clusters must be trained from scratch and which keep their trained prompt and
head. Everything that reads the store, loads features or writes blobs happens around it
(``eraser.Eraser.forget``); this module imports neither torch, sqlite3 nor the registry.

The rules, each what a from-scratch build on the remaining data would give:

- A deletion that leaves the clustering sample alone keeps every prototype and key; only the
  clusters that held a deleted sample change (``remove_members``). The sample is the ids of
  lowest seeded rank, so a fresh build draws the same sample and assigns every other point to
  the same nearest prototype.
- A deletion that hits the clustering sample, or a change of the clustering settings or the
  backbone (``clustering_changed``), reclusters the remaining data from scratch.
- A cluster of the new partition whose member set is exactly that of a current cluster keeps
  that cluster's prompt and head, unless the training settings changed
  (``training_changed``): training is a pure function of the member set and the training
  settings. Every other cluster is trained from scratch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from .clustering import Partition, build_partition, remove_members
from .cost import Rule
from .randomsplit import random_partition


@dataclass(frozen=True)
class Settings:
    """How the training data is partitioned: the seed, the clustering sample's size and the
    rule that cuts it (``clustering`` section of the config)."""

    seed: int
    sample_size: int
    rule: Rule

    @classmethod
    def of(cls, cfg) -> Settings:
        """From a ``Config`` (duck-typed: its ``seed`` and ``clustering`` section)."""
        c = cfg.clustering
        rule = Rule(
            c.distance_threshold,
            c.n_clusters,
            c.max_cluster_share,
            c.min_cluster_points,
            c.method,
            c.shares,
        )
        return cls(cfg.seed, c.sample_size, rule)

    def partition(self, ids: list[str], features: Mapping[str, np.ndarray]) -> Partition:
        """The partition a from-scratch build gives on these training ids."""
        r = self.rule
        if r.method == "random":
            return random_partition(ids, features, self.seed, self.sample_size, r.random_shares())
        return build_partition(
            ids,
            dict(features),
            self.seed,
            self.sample_size,
            r.distance_threshold,
            r.n_clusters,
            r.max_share,
            r.min_points,
        )


@dataclass(frozen=True)
class Decision:
    gone: frozenset[str]
    """The deleted ids that were training members of the current partition."""
    recluster: bool
    reason: str | None
    """Why the data is reclustered: ``"clustering sample"``, ``"clustering settings"``, or
    None when it is not."""
    partition: Partition
    """The new partition, the one a from-scratch build on the remaining data gives."""
    affected: tuple[str, ...]
    """Keys of current clusters that held a deleted sample, sorted."""
    retrain: tuple[str, ...]
    """Keys of new clusters to train from scratch, in partition order."""
    reuse: Mapping[str, str]
    """New cluster key -> key of the current cluster whose prompt and head it keeps."""

    @property
    def retrained_samples(self) -> int:
        """Training samples in the clusters to retrain."""
        sizes = dict(zip(self.partition.keys, self.partition.sizes()))
        return sum(sizes[k] for k in self.retrain)


def decide(
    current: Partition,
    deleted: Iterable[str],
    settings: Settings,
    features: Mapping[str, np.ndarray] | None = None,
    clustering_changed: bool = False,
    training_changed: bool = False,
) -> Decision:
    """What deleting ``deleted`` from ``current`` changes (see the module docstring).

    ``deleted`` may name ids that are no training member (held-out samples, or samples a
    crash left already removed): they change nothing. ``features`` (training id -> feature
    vector) is needed only to recluster; without it a recluster raises ``ValueError``.
    Deleting every training sample raises ``ValueError``: nothing would be left to train.
    """
    where = current.cluster_of()
    gone = frozenset(i for i in deleted if i in where)
    left = [i for members in current.members for i in members if i not in gone]
    if not left:
        raise ValueError("no training sample would be left")
    if gone & current.sample:
        reason: str | None = "clustering sample"
    elif clustering_changed:
        reason = "clustering settings"
    else:
        reason = None
    if reason is None:
        partition = remove_members(current, set(gone))
    else:
        if features is None:
            raise ValueError(f"reclustering ({reason}) needs the training features")
        partition = settings.partition(sorted(left), features)
    affected = tuple(sorted({current.keys[where[i]] for i in gone}))
    reuse = {} if training_changed else matching(current, partition)
    retrain = tuple(k for k in partition.keys if k not in reuse)
    return Decision(gone, reason is not None, reason, partition, affected, retrain, reuse)


def matching(current: Partition, new: Partition) -> dict[str, str]:
    """New cluster key -> current cluster key, for the clusters with the same member set."""
    by_members = {frozenset(m): k for k, m in zip(current.keys, current.members)}
    out = {}
    for key, members in zip(new.keys, new.members):
        old = by_members.get(frozenset(members))
        if old is not None:
            out[key] = old
    return out
