"""A forget that keeps the clustering, at the cost of what it touches.

When no deleted sample is in the clustering sample and nothing about the clustering, the
training or the config changed, a forget keeps every prototype and key, and only the
clusters that held a deleted sample change (``unlearning.decide``). ``plan`` finds those
clusters without decoding the others: a non-sample point belongs to its nearest prototype
(``clustering.assemble``), which its membership blob then confirms. It reads the rows and
features of those clusters alone, updates the held-out routing table (``routetable.update``)
instead of routing every held-out sample again, and keeps every other cluster's blobs.

The manifest it returns is the one ``materialize`` writes for the same forget, blob for blob
(``tests/test_delta.py``); whenever that cannot be shown cheaply (an older manifest layout, a
sample in no cluster or in the clustering sample, a cluster emptied, a cost that must be
replayed), ``plan`` returns None and the caller takes the full path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import routetable
from .clustering import chosen_points, nearest, sq_distances
from .config import Config
from .cost import Rule, carried_sizes
from .data.store import SampleRow, Store
from .executor import Executor
from .manifest import Manifest
from .materialize import (
    Change,
    Plan,
    assemble_manifest,
    cluster_fingerprint,
    config_hash,
    member_set_hash,
    points_blob,
    routing_entry,
    test_members_hash,
    train_and_evaluate,
)
from .model.backbone import Backbone
from .model.features import ensure_features
from .randomsplit import group_key, group_of
from .registry import Registry
from .unlearning import Settings

log = logging.getLogger("eraserd.delta")

NewPoints = dict[int, tuple[list[str], np.ndarray | None]]
"""Cluster position -> the keys and float32 values of its new routing points."""


@dataclass
class DeltaForget:
    """A planned forget without reclustering: what changes, ready to train."""

    cfg: Config
    store: Store
    registry: Registry
    backbone: Backbone
    previous: Manifest
    classes: list[str]
    fp_train: str
    plans: list[Plan]
    table: routetable.Table
    affected: tuple[str, ...]
    cost: dict
    started: float

    def materialize(self, change: Change, executor: Executor) -> Manifest:
        """Train the affected clusters, evaluate what moved, and return the new manifest."""
        clusters, results = train_and_evaluate(
            self.cfg,
            self.store,
            self.registry,
            self.backbone,
            self.classes,
            self.plans,
            executor,
        )
        return assemble_manifest(
            self.cfg,
            self.registry,
            self.backbone,
            self.classes,
            self.fp_train,
            clusters,
            self.previous.prototypes,
            routing_entry(self.cfg, self.registry, self.table),
            dict(self.previous.clustering),
            change,
            results,
            self.started,
        )


def plan(
    cfg: Config,
    store: Store,
    registry: Registry,
    backbone: Backbone,
    previous: Manifest,
    rows: list[SampleRow],
    fp_train: str,
    steps: Callable[[int], float],
) -> DeltaForget | None:
    """Plan forgetting ``rows`` from ``previous`` at the cost of what they touch, or None
    when the full path must decide (see the module docstring)."""
    started = time.perf_counter()
    route = previous.routing
    neighbors = cfg.routing.method == "neighbors"
    if (
        previous.config_hash != config_hash(cfg)
        or previous.cluster_fingerprint != cluster_fingerprint(cfg, backbone)
        or previous.train_fingerprint != fp_train
        or previous.cost is None
        or "routes" not in route
        or (
            neighbors and ("lists" not in route or any(c.points is None for c in previous.clusters))
        )
    ):
        return _full("the settings or the manifest layout changed")
    train = [r for r in rows if r.split == "train"]
    held_out = [r for r in rows if r.split != "train"]
    found = _locate(store, registry, backbone, previous, train, Settings.of(cfg).rule, cfg.seed)
    if found is None:
        return _full("a deleted sample is in the clustering sample or in no cluster")
    blobs, where = found
    gone = {r.key for r in train}

    kept = {pos: [k for k in blobs[pos]["members"] if k not in gone] for pos in set(where.values())}
    if not all(kept.values()):
        return _full("a cluster would be emptied")
    sizes = [len(kept[k]) if k in kept else c.size for k, c in enumerate(previous.clusters)]
    counts = [c.sample_count for c in previous.clusters]
    cost = carried_sizes(previous.cost, sizes, counts, steps)
    if cost is None:
        return _full("the deletion cost must be replayed")

    plans: dict[int, Plan] = {}
    removed: list[str] = []
    added: list[tuple[int, str]] = []
    new_points: NewPoints = {}
    for pos in sorted(kept):
        old, blob, keys = previous.clusters[pos], blobs[pos], kept[pos]
        members = store.rows_by_keys(keys)
        if len(members) != len(keys):
            return _full("a cluster names samples the store does not hold")
        points_h = None
        if neighbors:
            per = cfg.routing.points_per_cluster
            id_of = {r.key: r.sample_id for r in members} | {r.key: r.sample_id for r in train}
            old_ids = [id_of[k] for k in blob["members"]]
            key_of = {v: k for k, v in id_of.items()}
            before = {key_of[i] for i in chosen_points(old_ids, cfg.seed, per)}
            chosen = chosen_points([r.sample_id for r in members], cfg.seed, per)
            after = [key_of[i] for i in chosen]
            removed += sorted(before - set(after))
            added += [(pos, k) for k in sorted(set(after) - before)]
            by_id = {r.sample_id: r for r in members}
            feats = ensure_features(store, backbone, [by_id[i] for i in chosen], desc="points")
            vecs = [feats[i] for i in chosen]
            points_h = points_blob(registry, after, vecs, backbone.num_features)
            new_points[pos] = (after, np.stack(vecs) if vecs else None)
        plans[pos] = Plan(
            key=old.key,
            size=len(keys),
            rows=members,
            sample_count=old.sample_count,
            members=registry.put_json({"members": keys, "sample": blob["sample"]}),
            member_set=member_set_hash(keys),
            points=points_h,
            test=[],
            old=None,
        )

    old_table = _load_table(registry, previous)
    if neighbors:
        table, _ = routetable.update(
            old_table,
            cfg.routing.neighbors,
            [r.key for r in held_out],
            removed,
            _added(store, backbone, added, new_points) if added else None,
            _point_total(previous, cfg.routing.points_per_cluster, new_points),
            _recompute(store, backbone, registry, previous, new_points, old_table.depth),
        )
    else:
        keep = ~np.isin(old_table.keys, routetable.key_bytes(r.key for r in held_out))
        table = routetable.Table(
            old_table.keys[keep],
            old_table.route[keep],
            old_table.dist[keep],
            old_table.pos[keep],
            old_table.point[keep],
            old_table.count[keep],
        )
    if len(table.keys) != store.count("test") - len(held_out):
        return _full("the routing table does not match the held-out samples")

    # Clusters whose held-out samples changed: those that lost one to a deletion or a move.
    old_route = dict(zip(routetable.key_strings(old_table.keys), old_table.route.tolist()))
    new_route = dict(zip(routetable.key_strings(table.keys), table.route.tolist()))
    moved = {old_route[r.key] for r in held_out if r.key in old_route}
    for key, k in new_route.items():
        if old_route.get(key) != k:
            moved.update({k, old_route.get(key, k)})
    routed = table.routed()
    out = []
    for k, c in enumerate(previous.clusters):
        p = plans.get(k)
        if p is None:
            p = Plan(
                key=c.key,
                size=c.size,
                rows=[],
                sample_count=c.sample_count,
                members=c.members,
                member_set=c.member_set or "",
                points=c.points,
                test=[],
                old=c,
                test_members=None if k in moved else c.test_members,
            )
        if p.test_members is None:
            p.test = store.rows_by_keys(routed.get(k, []))
            p.test_members = test_members_hash(p.test)
        out.append(p)
    return DeltaForget(
        cfg,
        store,
        registry,
        backbone,
        previous,
        store.classes(),
        fp_train,
        out,
        table,
        tuple(sorted(previous.clusters[k].key for k in set(where.values()))),
        cost.to_dict(),
        started,
    )


def _full(reason: str) -> DeltaForget | None:
    """Say why the full path decides this forget (None: no plan)."""
    log.info("forget takes the full path", extra={"fields": {"reason": reason}})
    return None


def _locate(
    store: Store,
    registry: Registry,
    backbone: Backbone,
    previous: Manifest,
    train: list[SampleRow],
    rule: Rule,
    seed: int,
) -> tuple[dict[int, dict], dict[str, int]] | None:
    """The cluster of each deleted training sample and those clusters' membership blobs, or
    None when one is in the clustering sample, in no cluster, or has no cached feature.
    Each one's cluster is found as the partition placed it: its nearest prototype, or with
    random groups, its group (a hash of its id)."""
    if not train:
        return {}, {}
    if rule.method == "random":
        position = {c.key: pos for pos, c in enumerate(previous.clusters)}
        groups = group_of([r.sample_id for r in train], seed, rule.random_shares())
        keys = [group_key(g) for g in groups.tolist()]
        if any(k not in position for k in keys):
            return None
        guess = [position[k] for k in keys]
    else:
        feats = store.cached_features([r.key for r in train], backbone.feature_key)
        if len(feats) != len(train):
            return None
        protos = registry.get_tensors(previous.prototypes, "prototypes")["prototypes"].numpy()
        guess = nearest(np.stack([feats[r.key] for r in train]), protos).tolist()
    blobs: dict[int, dict] = {}
    where: dict[str, int] = {}
    for r, pos in zip(train, guess):
        if pos not in blobs:
            c = previous.clusters[pos]
            blobs[pos] = registry.get_json(c.members, f"cluster {c.key} members")
            blobs[pos]["_members"] = set(blobs[pos]["members"])
            blobs[pos]["_sample"] = set(blobs[pos]["sample"])
        if r.key not in blobs[pos]["_members"] or r.key in blobs[pos]["_sample"]:
            return None
        where[r.key] = pos
    for b in blobs.values():
        del b["_members"], b["_sample"]
    return blobs, where


def _load_table(registry: Registry, m: Manifest) -> routetable.Table:
    routes = {k: v.numpy() for k, v in registry.get_tensors(m.routing["routes"]).items()}
    if "lists" in m.routing:
        lists = {k: v.numpy() for k, v in registry.get_tensors(m.routing["lists"]).items()}
    else:
        n = len(routes["route"])
        lists = routetable.empty(n, 0).lists()
    return routetable.Table.from_arrays(routes, lists)


def _points_of(
    registry: Registry, previous: Manifest, new_points: NewPoints, dim: int
) -> routetable.Points:
    """Every routing point of the new version, in cluster order (``dim`` features each)."""
    feats: list[np.ndarray] = []
    keys: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    for k, c in enumerate(previous.clusters):
        if k in new_points:
            ks, vecs = new_points[k]
            kb = routetable.key_bytes(ks)
            f = vecs if vecs is not None else np.zeros((0, dim), np.float32)
        else:
            assert c.points is not None
            blob = registry.get_tensors(c.points, f"cluster {c.key} routing points")
            f = blob["points"].numpy()
            kb = routetable.as_s20(blob["keys"].numpy())
        feats.append(np.asarray(f, dtype=np.float32))
        keys.append(kb)
        pos.append(np.full(len(kb), k, dtype=np.int64))
    return routetable.Points(
        np.concatenate(feats).astype(np.float64), np.concatenate(pos), np.concatenate(keys)
    )


def _point_total(previous: Manifest, per: int | None, new_points: NewPoints) -> int:
    """How many routing points the new version has (``chosen_points`` of each cluster)."""
    total = 0
    for k, c in enumerate(previous.clusters):
        if k in new_points:
            total += len(new_points[k][0])
        else:
            total += min(c.size, per) if per is not None else c.size
    return total


def _added(
    store: Store,
    backbone: Backbone,
    added: list[tuple[int, str]],
    new_points: NewPoints,
) -> Callable[[np.ndarray], routetable.Added]:
    def distances(table_keys: np.ndarray) -> routetable.Added:
        keys = routetable.key_strings(table_keys)
        feats = store.cached_features(keys, backbone.feature_key)
        missing = [k for k in keys if k not in feats]
        if missing:
            rows = store.rows_by_keys(missing)
            got = ensure_features(store, backbone, rows, desc="held-out")
            feats.update({r.key: got[r.sample_id] for r in rows})
        x = (
            np.stack([feats[k] for k in keys]).astype(np.float64)
            if keys
            else np.zeros((0, 1), np.float64)
        )
        dist = np.empty((len(added), len(keys)))
        for a, (pos, key) in enumerate(added):
            ks, vecs = new_points[pos]
            assert vecs is not None  # an added point is one of them
            vec = np.asarray(vecs[ks.index(key)], dtype=np.float32).astype(np.float64)
            dist[a] = sq_distances(x, vec) if keys else np.empty(0)
        return routetable.Added(
            np.array([pos for pos, _ in added], dtype=np.int64),
            routetable.key_bytes(k for _, k in added),
            dist,
        )

    return distances


def _recompute(
    store: Store,
    backbone: Backbone,
    registry: Registry,
    previous: Manifest,
    new_points: NewPoints,
    depth: int,
) -> Callable[[np.ndarray], list[routetable.Entries]]:
    def again(table_keys: np.ndarray) -> list[routetable.Entries]:
        points = _points_of(registry, previous, new_points, backbone.num_features)
        rows = store.rows_by_keys(routetable.key_strings(table_keys))
        feats = ensure_features(store, backbone, rows, desc="held-out")
        by_key = {r.key: feats[r.sample_id] for r in rows}
        return [
            routetable.nearest_entries(
                np.asarray(by_key[k], dtype=np.float32).astype(np.float64), points, depth
            )
            for k in routetable.key_strings(table_keys)
        ]

    return again
