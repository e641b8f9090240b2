"""What a pending deletion will retrain: its ``plan``, from the current version's partition.

A sample outside the clustering sample retrains only its own cluster, so the plan names the
clusters that hold the request's training samples and counts what those clusters keep. A
sample in the clustering sample reclusters the data: which clusters change is then only known
by doing it, so the share retrained is the version's mean recluster share (the manifest's
``cost.recluster_share``), an estimate (``estimated: true``). Either way the plan is for the
request alone, against the version current when it is asked for; a batch that holds other
requests too retrains the union of their plans.

``VersionIndex`` is built once per version from the manifest and its member lists (store
keys, never raw ids); ``plan`` is pure. ``PlanCache`` keeps the index of the version
``CURRENT`` names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .errors import RegistryError
from .manifest import ClusterEntry, Manifest
from .registry import Registry


@dataclass(frozen=True)
class VersionIndex:
    version: int
    keys: tuple[str, ...]
    """Cluster keys, in manifest order."""
    sizes: tuple[int, ...]
    cluster_of: Mapping[str, int]
    """Store key of each training sample -> index of its cluster."""
    sample: frozenset[str]
    """Store keys in the clustering sample."""
    recluster_share: float
    """Mean share a recluster retrains (1.0, all of it, when the manifest has no cost)."""

    @property
    def train(self) -> int:
        return sum(self.sizes)


def index_version(manifest: Manifest, members: Callable[[ClusterEntry], dict]) -> VersionIndex:
    """The index of one version; ``members(cluster)`` reads a cluster's member-list blob."""
    cluster_of: dict[str, int] = {}
    sample: set[str] = set()
    for k, cluster in enumerate(manifest.clusters):
        blob = members(cluster)
        cluster_of.update(dict.fromkeys(blob["members"], k))
        sample.update(blob["sample"])
    return VersionIndex(
        manifest.version,
        manifest.keys,
        tuple(c.size for c in manifest.clusters),
        cluster_of,
        frozenset(sample),
        float((manifest.cost or {}).get("recluster_share", 1.0)),
    )


def plan(index: VersionIndex, keys: Iterable[str]) -> dict:
    """What deleting the samples with these store keys retrains in ``index``'s version.

    Held-out samples are in no cluster and retrain nothing. ``samples_retrained`` counts the
    samples the retrained clusters keep; ``share_retrained`` is their share of the training
    samples left after the deletion.
    """
    train = {k for k in keys if k in index.cluster_of}
    hit = sorted({index.cluster_of[k] for k in train})
    left = index.train - len(train)
    recluster = bool(train & index.sample)
    if recluster:
        share = index.recluster_share
        retrained = round(share * left)
    else:
        retrained = sum(index.sizes[c] for c in hit) - len(train)
        share = retrained / left if left else 0.0
    return {
        "version": index.version,
        "clusters": [index.keys[c] for c in hit],
        "samples_retrained": retrained,
        "share_retrained": round(share, 6),
        "recluster": recluster,
        "estimated": recluster,
    }


class PlanCache:
    """The ``VersionIndex`` of the version ``CURRENT`` names, rebuilt when it changes."""

    def __init__(self, registry: Registry):
        self._registry = registry
        self._lock = threading.Lock()
        self._pointer: tuple[int, str] | None = None
        self._index: VersionIndex | None = None

    def index(self) -> VersionIndex:
        with self._lock:
            pointer = self._registry.current()
            if pointer is None:
                raise RegistryError("no model yet: nothing to plan against")
            if self._index is None or pointer != self._pointer:
                manifest = self._registry.load(pointer[0])
                self._index = index_version(manifest, self._members)
                self._pointer = pointer
            return self._index

    def plan(self, keys: Iterable[str]) -> dict:
        return plan(self.index(), keys)

    def _members(self, cluster: ClusterEntry) -> dict:
        return self._registry.get_json(cluster.members, f"cluster {cluster.key} members")
