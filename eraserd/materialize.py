"""Turn a partition into a registry version: train what changed, reuse what did not.

A cluster's prompt and head are a pure function of (its member set, the training
fingerprint). Which clusters of a forget keep their previous blobs byte for byte is decided by
``unlearning.decide`` and passed in as ``reuse``; ``materialize`` checks that each reused
cluster's member set and training fingerprint are indeed unchanged, and trains every other
cluster from scratch. Build and forget both go through ``materialize``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from . import routetable
from .clustering import Partition, chosen_points, nearest
from .config import Config
from .data.images import canonical_view
from .data.store import SampleRow, Store
from .executor import Executor, RetuneJob
from .ids import member_seed, sha256_hex
from .manifest import ChangeRecord, ClusterEntry, JobRecord, Manifest
from .model.backbone import Backbone
from .model.fastpath import FASTPATH_VERSION
from .numerics import numeric_platform
from .progress import bar
from .registry import Registry
from .training.engine import ENGINE_VERSION, predict_batch
from .training.streaming import ClusterSource


@dataclass(frozen=True)
class Change:
    kind: str  # "build" | "forget"
    forgotten: int = 0
    reclustered: bool = True
    batch: str | None = None
    """The daemon batch that produced this version: makes publishing idempotent per batch."""
    affected: tuple[str, ...] = ()
    cost: dict | None = None
    """What a random single deletion from the new version retrains (``cost.RetrainCost``)."""


def train_fingerprint(
    cfg: Config, backbone: Backbone, classes: list[str], device_kind: str = "cpu"
) -> str:
    """Everything besides membership that shapes a trained prompt/head, bit for bit.

    ``runtime`` is included (thread count, determinism, precision change float results), as
    are the engine's and the prepared backbone's versions and the kind of device the executor
    trains on: a model trained on a GPU is not what a CPU rebuild would produce.
    """
    return sha256_hex(
        "|".join(
            [
                cfg.section_hash("seed", "training", "prompt", "runtime"),
                backbone.fingerprint,
                ",".join(classes),
                ENGINE_VERSION,
                FASTPATH_VERSION,
                f"device={device_kind}",
            ]
        ).encode()
    )


def cluster_fingerprint(cfg: Config, backbone: Backbone) -> str:
    return sha256_hex(
        "|".join([cfg.section_hash("seed", "clustering", "runtime"), backbone.fingerprint]).encode()
    )


def config_hash(cfg: Config) -> str:
    plain = cfg.to_dict()
    plain.pop("state_dir")
    plain.pop("daemon")  # serving settings never change a model
    plain.pop("executor")  # nor does where the jobs run
    return sha256_hex(repr(sorted(plain.items())).encode())


def cluster_source(store: Store, rows: list[SampleRow], size: int, seed: int) -> ClusterSource:
    """Where a cluster's training images are (``rows`` in sample-id order), and its seed."""
    return ClusterSource(
        str(store.objects),
        tuple(r.key for r in rows),
        tuple(r.label for r in rows),
        member_seed(seed, [r.sample_id for r in rows]),
        size,
    )


_EVAL_CHUNK = 4 * 64
"""Test views decoded at once: a whole number of ``predict_batch`` batches (64)."""


def load_views(store: Store, rows: list[SampleRow], size: int) -> torch.Tensor:
    if not rows:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return torch.stack([canonical_view(store.read_object(r), size) for r in rows])


def materialize(
    cfg: Config,
    store: Store,
    registry: Registry,
    backbone: Backbone,
    part: Partition,
    features: Mapping[str, np.ndarray],
    test: list[SampleRow],
    previous: Manifest | None,
    change: Change,
    executor: Executor,
    reuse: Mapping[str, str] | None = None,
) -> Manifest:
    """Write every blob of the new version and return its manifest (not yet current).

    ``features`` holds every training member's and every ``test`` sample's feature.
    ``reuse`` maps a cluster key of ``part`` to the key of the ``previous`` cluster whose
    prompt and head it keeps (``unlearning.Decision.reuse``); every other cluster is trained.
    """
    started = time.perf_counter()
    classes = store.classes()
    by_id = {r.sample_id: r for r in store.rows()}
    fp_train = train_fingerprint(cfg, backbone, classes, executor.device_kind())
    reuse = dict(reuse or {})
    if reuse and (previous is None or previous.train_fingerprint != fp_train):
        raise ValueError("clusters can be reused only from a previous version trained alike")
    before = {c.key: c for c in previous.clusters} if reuse and previous else {}

    dim = next(iter(features.values())).shape[0]
    point_blobs: list[str | None] = [None] * len(part.keys)
    points = None
    if cfg.routing.method == "neighbors":
        chosen = [chosen_points(m, cfg.seed, cfg.routing.points_per_cluster) for m in part.members]
        for k, ids in enumerate(chosen):
            point_blobs[k] = points_blob(
                registry, [by_id[i].key for i in ids], [features[i] for i in ids], dim
            )
        points = table_points(
            [[by_id[i].key for i in ids] for ids in chosen],
            [[features[i] for i in ids] for ids in chosen],
            dim,
        )
    test_by_key = {r.key: r for r in test}
    keys = sorted(test_by_key)
    rows = np.stack([features[test_by_key[k].sample_id] for k in keys]) if keys else None
    table = route_table(cfg, part.prototypes, points, keys, rows)
    routed = routed_rows(table, test_by_key, len(part.keys))

    plans = []
    for k, key in enumerate(part.keys):
        members = part.members[k]
        member_keys = sorted(by_id[i].key for i in members)
        mblob = registry.put_json(
            {
                "members": member_keys,
                "sample": sorted(by_id[i].key for i in members if i in part.sample),
            }
        )
        mset = member_set_hash(member_keys)
        old = before[reuse[key]] if key in reuse else None
        if old is not None and _member_set(registry, old) != mset:
            raise ValueError(f"cluster {key}: reused from {old.key}, whose members differ")
        plans.append(
            Plan(
                key=key,
                size=len(members),
                rows=[by_id[i] for i in members],
                sample_count=sum(1 for i in members if i in part.sample),
                members=mblob,
                member_set=mset,
                points=point_blobs[k],
                test=routed[k],
                old=old,
            )
        )
    clusters, results = train_and_evaluate(cfg, store, registry, backbone, classes, plans, executor)
    sample_hash = sha256_hex("\n".join(sorted(by_id[i].key for i in part.sample)).encode())
    return assemble_manifest(
        cfg,
        registry,
        backbone,
        classes,
        fp_train,
        clusters,
        registry.put_tensors({"prototypes": torch.from_numpy(part.prototypes.copy())}),
        routing_entry(cfg, registry, table),
        {"sample_count": len(part.sample), "sample_hash": sample_hash},
        change,
        results,
        started,
    )


# ---- the pieces both a build and a forget without reclustering (``delta.py``) use --------


@dataclass
class Plan:
    """One cluster of the new version: its data, and the cluster it keeps blobs from."""

    key: str
    size: int
    rows: list[SampleRow]
    """Its members, in sample-id order: read only when it is trained."""
    sample_count: int
    members: str
    member_set: str
    points: str | None
    test: list[SampleRow]
    """The held-out samples routed to it, in sample-id order."""
    old: ClusterEntry | None
    """The cluster whose prompt and head it keeps; None: trained from scratch."""
    test_members: str | None = None
    """Hash of the keys of ``test``; computed when None."""


def points_blob(registry: Registry, keys: list[str], feats: list[np.ndarray], dim: int) -> str:
    """One cluster's routing points (in id order) and their keys."""
    arr = np.stack(feats).astype(np.float32) if feats else np.zeros((0, dim), np.float32)
    kb = routetable.key_bytes(keys)
    return registry.put_tensors(
        {"points": torch.from_numpy(arr), "keys": torch.from_numpy(routetable.as_u8(kb))}
    )


def table_points(
    keys: list[list[str]], feats: list[list[np.ndarray]], dim: int
) -> routetable.Points:
    """Every cluster's routing points, in cluster order, as the table needs them: float32
    values (as stored) widened to float64."""
    flat = [f for fs in feats for f in fs]
    return routetable.Points(
        features=(np.stack(flat) if flat else np.zeros((0, dim), np.float32))
        .astype(np.float32)
        .astype(np.float64),
        pos=np.concatenate([np.full(len(ks), k, dtype=np.int64) for k, ks in enumerate(keys)]),
        keys=routetable.key_bytes([k for ks in keys for k in ks]),
    )


def route_table(
    cfg: Config,
    prototypes: np.ndarray,
    points: routetable.Points | None,
    keys: list[str],
    rows: np.ndarray | None,
) -> routetable.Table:
    """Where each held-out sample (``keys``, sorted, with feature ``rows``) routes."""
    kb = routetable.key_bytes(keys)
    if points is None:
        table = routetable.empty(len(keys), 0)
        table.keys[:] = kb
        if rows is not None:
            table.route[:] = nearest(rows, prototypes)
        return table
    k = cfg.routing.neighbors
    rows = rows if rows is not None else np.zeros((0, points.features.shape[1]))
    return routetable.build(kb, rows, points, k, routetable.depth_for(k))


def routing_entry(cfg: Config, registry: Registry, table: routetable.Table) -> dict[str, Any]:
    """The manifest's ``routing``: the method, the held-out routes and (by neighbors) the
    nearest-point lists (``routetable.Table.lists``)."""

    def put(arrays: dict[str, np.ndarray]) -> str:
        return registry.put_tensors(
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        )

    route: dict[str, Any] = {"method": cfg.routing.method, "routes": put(table.routes())}
    if cfg.routing.method == "neighbors":
        route["neighbors"] = cfg.routing.neighbors
        route["lists"] = put(table.lists())
    return route


def routed_rows(
    table: routetable.Table, test_by_key: Mapping[str, SampleRow], clusters: int
) -> list[list[SampleRow]]:
    """Per cluster position, its held-out samples in sample-id order."""
    out: list[list[SampleRow]] = [[] for _ in range(clusters)]
    for k, keys in table.routed().items():
        out[k] = sorted((test_by_key[key] for key in keys), key=lambda r: r.sample_id)
    return out


def test_members_hash(rows: list[SampleRow]) -> str:
    return sha256_hex("\n".join(sorted(r.key for r in rows)).encode())


def train_and_evaluate(
    cfg: Config,
    store: Store,
    registry: Registry,
    backbone: Backbone,
    classes: list[str],
    plans: list[Plan],
    executor: Executor,
) -> tuple[list[ClusterEntry], dict]:
    """Train every planned cluster that keeps no blobs, then evaluate each cluster whose
    prompt, head or routed held-out samples changed. Returns entries in plan order."""
    jobs = []
    for p in plans:
        if p.old is None:
            source = cluster_source(store, p.rows, backbone.image_size, cfg.seed)
            n = len(p.rows)
            jobs.append(
                RetuneJob(
                    p.key, float(n * cfg.training.epochs_for(n)), len(classes), source.load, source
                )
            )
    with bar(total=sum(j.cost for j in jobs), desc="retune", unit="img-step") as progress:
        results = executor.run(jobs, on_done=lambda job, res: progress.update(job.cost))
    clusters: list[ClusterEntry] = []
    for p in plans:
        old = p.old
        if old is not None:
            prompt_h, head_h, platform = old.prompt, old.head, old.platform
        else:
            result = results[p.key]
            prompt_h = registry.put_tensors({"prompt": result.prompt})
            head_h = registry.put_tensors({"weight": result.weight, "bias": result.bias})
            platform = numeric_platform(result.device)
        test_hash = p.test_members or test_members_hash(p.test)
        if old is not None and old.test_members == test_hash:
            test_n, correct = old.test_n, old.test_correct
        else:
            test_n, correct = _evaluate(store, registry, backbone, prompt_h, head_h, p.test)
        clusters.append(
            ClusterEntry(
                key=p.key,
                size=p.size,
                sample_count=p.sample_count,
                members=p.members,
                member_set=p.member_set,
                prompt=prompt_h,
                head=head_h,
                test_members=test_hash,
                test_n=test_n,
                test_correct=correct,
                platform=platform,
                points=p.points,
            )
        )
    return clusters, results


def assemble_manifest(
    cfg: Config,
    registry: Registry,
    backbone: Backbone,
    classes: list[str],
    fp_train: str,
    clusters: list[ClusterEntry],
    prototypes: str,
    routing: dict[str, Any],
    clustering: dict[str, Any],
    change: Change,
    results: Mapping,
    started: float,
) -> Manifest:
    test_n = sum(c.test_n for c in clusters)
    retrained = tuple(c.key for c in clusters if c.key in results)
    cur = registry.current()
    return Manifest(
        version=registry.next_version(),
        parent=cur[0] if cur else None,
        parent_manifest=cur[1] if cur else None,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        config_hash=config_hash(cfg),
        config=cfg.to_dict(),
        backbone=backbone.identity(),
        classes=tuple(classes),
        train_fingerprint=fp_train,
        cluster_fingerprint=cluster_fingerprint(cfg, backbone),
        clustering=clustering,
        prototypes=prototypes,
        routing=routing,
        clusters=tuple(clusters),
        samples={"train": sum(c.size for c in clusters), "test": test_n},
        accuracy=(sum(c.test_correct for c in clusters) / test_n) if test_n else None,
        cost=change.cost,
        change=ChangeRecord(
            kind=change.kind,
            forgotten=change.forgotten,
            reclustered=change.reclustered,
            retrained=retrained,
            reused=len(clusters) - len(retrained),
            jobs={
                k: JobRecord(round(r.seconds, 3), r.device, r.attempts)
                for k, r in sorted(results.items())
            },
            affected=tuple(change.affected),
            batch=change.batch,
            seconds=round(time.perf_counter() - started, 3),
        ),
    )


def member_set_hash(member_keys: list[str]) -> str:
    """What a cluster's training depends on among its data: the set of its members. Unlike
    the membership blob, it ignores which members are in the clustering sample, so a cluster
    that only gained or lost clustering-sample status is reused, not retrained."""
    return sha256_hex("\n".join(sorted(member_keys)).encode())


def _member_set(registry: Registry, cluster: ClusterEntry) -> str:
    if cluster.member_set is not None:
        return cluster.member_set
    blob = registry.get_json(cluster.members, f"cluster {cluster.key} members")
    return member_set_hash(blob["members"])


def _evaluate(
    store: Store,
    registry: Registry,
    backbone: Backbone,
    prompt_h: str,
    head_h: str,
    rows: list[SampleRow],
) -> tuple[int, int]:
    if not rows:
        return 0, 0
    prompt = registry.get_tensors(prompt_h, "prompt")["prompt"]
    head = registry.get_tensors(head_h, "head")
    correct = 0
    # Chunks of whole prediction batches: the same batches as one call, a bounded memory.
    for lo in range(0, len(rows), _EVAL_CHUNK):
        part = rows[lo : lo + _EVAL_CHUNK]
        views = load_views(store, part, backbone.image_size)
        preds = predict_batch(backbone, prompt, head["weight"], head["bias"], views)
        correct += int((preds == torch.tensor([r.label for r in part])).sum())
    return len(rows), correct
