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

from .clustering import Partition, Routing
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
    routing: Routing,
    test_features: dict[str, np.ndarray],
    previous: Manifest | None,
    change: Change,
    executor: Executor,
    reuse: Mapping[str, str] | None = None,
) -> Manifest:
    """Write every blob of the new version and return its manifest (not yet current).

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

    test_ids = sorted(test_features)
    routed: list[list[str]] = [[] for _ in part.keys]
    if test_ids:
        for sid, k in zip(
            test_ids,
            routing.route(np.stack([test_features[i] for i in test_ids])).tolist(),
        ):
            routed[k].append(sid)

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
        test_hash = sha256_hex("\n".join(sorted(by_id[i].key for i in routed[k])).encode())
        old = before[reuse[key]] if key in reuse else None
        if old is not None and _member_set(registry, old) != mset:
            raise ValueError(f"cluster {key}: reused from {old.key}, whose members differ")
        plans.append((k, key, members, mblob, mset, test_hash, old))

    jobs = []
    for _, key, members, _, _, _, old in plans:
        if old is None:
            rows = [by_id[i] for i in members]
            source = cluster_source(store, rows, backbone.image_size, cfg.seed)
            jobs.append(
                RetuneJob(
                    key,
                    float(len(members) * cfg.training.epochs_for(len(members))),
                    len(classes),
                    source.load,
                    source,
                )
            )
    with bar(total=sum(j.cost for j in jobs), desc="retune", unit="img-step") as progress:
        results = executor.run(jobs, on_done=lambda job, res: progress.update(job.cost))
    clusters: list[ClusterEntry] = []
    retrained: list[str] = []
    for k, key, members, mblob, mset, test_hash, old in plans:
        if old is not None:
            prompt_h, head_h = old.prompt, old.head
            platform = old.platform
        else:
            result = results[key]
            prompt_h = registry.put_tensors({"prompt": result.prompt})
            head_h = registry.put_tensors({"weight": result.weight, "bias": result.bias})
            platform = numeric_platform(result.device)
            retrained.append(key)
        if (
            old is not None
            and old.test_members == test_hash
            and (old.prompt, old.head) == (prompt_h, head_h)
        ):
            test_n, correct = old.test_n, old.test_correct
        else:
            test_n, correct = _evaluate(
                store, registry, backbone, prompt_h, head_h, [by_id[i] for i in routed[k]]
            )
        clusters.append(
            ClusterEntry(
                key=key,
                size=len(members),
                sample_count=sum(1 for i in members if i in part.sample),
                members=mblob,
                member_set=mset,
                prompt=prompt_h,
                head=head_h,
                test_members=test_hash,
                test_n=test_n,
                test_correct=correct,
                platform=platform,
            )
        )

    protos_h = registry.put_tensors({"prototypes": torch.from_numpy(part.prototypes.copy())})
    route: dict[str, Any] = {"method": cfg.routing.method}
    if routing.points is not None:
        route["neighbors"] = routing.neighbors
        route["points"] = registry.put_tensors(
            {"points": torch.from_numpy(routing.points), "owner": torch.from_numpy(routing.owner)}
        )
    test_n = sum(c.test_n for c in clusters)
    cur = registry.current()
    sample_hash = sha256_hex("\n".join(sorted(by_id[i].key for i in part.sample)).encode())
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
        clustering={"sample_count": len(part.sample), "sample_hash": sample_hash},
        prototypes=protos_h,
        routing=route,
        clusters=tuple(clusters),
        samples={"train": sum(c.size for c in clusters), "test": test_n},
        accuracy=(sum(c.test_correct for c in clusters) / test_n) if test_n else None,
        cost=change.cost,
        change=ChangeRecord(
            kind=change.kind,
            forgotten=change.forgotten,
            reclustered=change.reclustered,
            retrained=tuple(retrained),
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
