"""One version of the model, typed: the manifest written to ``registry/versions/NNNNNN.json``.

Every module that reads a version reads a ``Manifest``: fields, not string keys, and one place
for the defaults of manifests written by older releases. ``to_dict`` is the file's exact JSON
layout, so a manifest read and written back hashes the same. Pure: no torch, no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import RegistryError

FORMAT = "eraserd.version/1"

ROUTING_BLOBS = ("points", "routes", "lists")
"""Blobs a manifest's ``routing`` may name: every cluster's routing points in one blob (older
manifests), the held-out samples' routes, and the nearest-point lists (``routetable.py``)."""


@dataclass(frozen=True)
class ClusterEntry:
    """One cluster of a version: its data (by hash) and its trained prompt and head."""

    key: str
    size: int
    sample_count: int
    """Members that are in the clustering sample."""
    members: str
    """Blob: the sorted member keys, and which of them are in the clustering sample."""
    member_set: str | None
    """Hash of the member set alone (None in manifests older than cluster reuse)."""
    prompt: str
    head: str
    test_members: str
    test_n: int
    test_correct: int
    platform: str | None
    """The numeric platform the prompt and head were trained on (``numerics.py``)."""
    points: str | None = None
    """Blob: the cluster's routing points (``points`` float32, ``keys``), for routing by
    neighbors. None with prototype routing, and in manifests that kept every cluster's points
    in one ``routing.points`` blob."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClusterEntry:
        return cls(
            key=d["key"],
            size=int(d["size"]),
            sample_count=int(d.get("sample_count", 0)),
            members=d["members"],
            member_set=d.get("member_set"),
            prompt=d["prompt"],
            head=d["head"],
            test_members=d.get("test_members", ""),
            test_n=int(d.get("test_n", 0)),
            test_correct=int(d.get("test_correct", 0)),
            platform=d.get("platform"),
            points=d.get("points"),
        )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for optional in ("member_set", "points"):
            if out[optional] is None:
                del out[optional]
        return out


@dataclass(frozen=True)
class JobRecord:
    """How one cluster's retune went."""

    seconds: float
    device: str
    attempts: int


@dataclass(frozen=True)
class ChangeRecord:
    """What produced this version from its parent."""

    kind: str
    """``build`` or ``forget``."""
    forgotten: int = 0
    reclustered: bool = True
    retrained: tuple[str, ...] = ()
    reused: int = 0
    jobs: Mapping[str, JobRecord] = field(default_factory=dict)
    affected: tuple[str, ...] = ()
    batch: str | None = None
    """The daemon batch that produced this version: makes publishing idempotent per batch."""
    seconds: float = 0.0
    superseded: tuple[str, ...] | None = None
    """Blobs of the parent this version no longer references (forget only)."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChangeRecord:
        sup = d.get("superseded")
        return cls(
            kind=d.get("kind", "build"),
            forgotten=int(d.get("forgotten", 0)),
            reclustered=bool(d.get("reclustered", True)),
            retrained=tuple(d.get("retrained", ())),
            reused=int(d.get("reused", 0)),
            jobs={k: JobRecord(**j) for k, j in (d.get("jobs") or {}).items()},
            affected=tuple(d.get("affected", ())),
            batch=d.get("batch"),
            seconds=float(d.get("seconds") or 0.0),
            superseded=tuple(sup) if sup is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "forgotten": self.forgotten,
            "reclustered": self.reclustered,
            "retrained": list(self.retrained),
            "reused": self.reused,
            "jobs": {k: dataclasses.asdict(j) for k, j in sorted(self.jobs.items())},
            "affected": list(self.affected),
            "batch": self.batch,
            "seconds": self.seconds,
        }
        if self.superseded is not None:
            out["superseded"] = list(self.superseded)
        return out


@dataclass(frozen=True)
class Manifest:
    version: int
    parent: int | None
    parent_manifest: str | None
    """The file hash of the parent's manifest, as CURRENT named it."""
    created_at: str
    config_hash: str
    config: Mapping[str, Any]
    """The whole config the version was built with (``Config.to_dict``)."""
    backbone: Mapping[str, Any]
    classes: tuple[str, ...]
    train_fingerprint: str
    cluster_fingerprint: str
    clustering: Mapping[str, Any]
    """``sample_count`` and ``sample_hash`` of the clustering sample."""
    prototypes: str
    routing: Mapping[str, Any]
    clusters: tuple[ClusterEntry, ...]
    samples: Mapping[str, int]
    """``train`` and ``test`` counts."""
    accuracy: float | None
    cost: Mapping[str, Any] | None
    """What a random single deletion retrains (``cost.RetrainCost``); None in old manifests."""
    change: ChangeRecord

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "manifest") -> Manifest:
        if d.get("format") != FORMAT:
            raise RegistryError(f"{where}: unknown manifest format {d.get('format')!r}")
        try:
            return cls(
                version=int(d["version"]),
                parent=d.get("parent"),
                parent_manifest=d.get("parent_manifest"),
                created_at=d["created_at"],
                config_hash=d["config_hash"],
                config=d["config"],
                backbone=d["backbone"],
                classes=tuple(d["classes"]),
                train_fingerprint=d["train_fingerprint"],
                cluster_fingerprint=d["cluster_fingerprint"],
                clustering=d.get("clustering", {}),
                prototypes=d["prototypes"],
                routing=d.get("routing", {"method": "prototype"}),
                clusters=tuple(ClusterEntry.from_dict(c) for c in d["clusters"]),
                samples=d["samples"],
                accuracy=d.get("accuracy"),
                cost=d.get("cost"),
                change=ChangeRecord.from_dict(d.get("change") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(
                f"{where}: malformed manifest ({type(exc).__name__}: {exc})"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """The manifest file's JSON object."""
        return {
            "format": FORMAT,
            "version": self.version,
            "parent": self.parent,
            "parent_manifest": self.parent_manifest,
            "created_at": self.created_at,
            "config_hash": self.config_hash,
            "config": self.config,
            "backbone": self.backbone,
            "classes": list(self.classes),
            "train_fingerprint": self.train_fingerprint,
            "cluster_fingerprint": self.cluster_fingerprint,
            "clustering": self.clustering,
            "prototypes": self.prototypes,
            "routing": self.routing,
            "clusters": [c.to_dict() for c in self.clusters],
            "samples": self.samples,
            "accuracy": self.accuracy,
            "cost": self.cost,
            "change": self.change.to_dict(),
        }

    # ---- derived facts --------------------------------------------------------------------

    @property
    def keys(self) -> tuple[str, ...]:
        """Cluster keys, in manifest order (the order of the prototypes)."""
        return tuple(c.key for c in self.clusters)

    @property
    def sizes(self) -> dict[str, int]:
        return {c.key: c.size for c in self.clusters}

    @property
    def train_samples(self) -> int:
        return int(self.samples.get("train", sum(c.size for c in self.clusters)))

    @property
    def training(self) -> Mapping[str, Any]:
        """The ``training`` section of the config the version was built with."""
        return self.config.get("training", {})

    @property
    def deterministic(self) -> bool:
        return bool(self.config.get("runtime", {}).get("deterministic", True))

    def cluster(self, key: str) -> ClusterEntry | None:
        return next((c for c in self.clusters if c.key == key), None)

    def blobs(self) -> set[str]:
        """Every blob this version references: what garbage collection keeps."""
        refs = {self.prototypes}
        refs.update(self.routing[k] for k in ROUTING_BLOBS if k in self.routing)
        for c in self.clusters:
            refs.update((c.members, c.prompt, c.head))
            if c.points is not None:
                refs.add(c.points)
        return refs

    def with_change(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, change=dataclasses.replace(self.change, **changes))
