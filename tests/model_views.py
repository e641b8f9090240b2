"""What defines a built model, for comparing two builds bit for bit: the exactness, executor
and Ray tests (and the scripts they run in a subprocess) share these."""

from __future__ import annotations

import hashlib

from eraserd import routetable
from eraserd.eraser import Eraser


def membership(er: Eraser) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s in er.samples():
        if s["cluster"] is not None:
            out.setdefault(s["cluster"], []).append(s["sample_id"])
    return out


def model_view(er: Eraser) -> dict:
    """Everything that defines the model, in a form independent of the state dir's secret."""
    m = er.registry.load()
    return {
        "keys": list(m.keys),
        "prototypes": m.prototypes,
        "routing": routing_view(er),
        "blobs": {c.key: (c.prompt, c.head) for c in m.clusters},
        "members": membership(er),
        "in_sample": sorted(s["sample_id"] for s in er.samples() if s["in_clustering_sample"]),
    }


def forget_two(er: Eraser) -> dict:
    """Forget one clustering-sample point and one other training point; the model's view."""
    rows = er.samples()
    gone = [
        next(r["sample_id"] for r in rows if r["in_clustering_sample"]),
        next(
            r["sample_id"] for r in rows if r["split"] == "train" and not r["in_clustering_sample"]
        ),
    ]
    er.forget(sample_ids=gone)
    return model_view(er)


def build_and_forget(cfg, backbone=None) -> dict:
    with Eraser(cfg, backbone=backbone) as er:
        er.build()
        return forget_two(er)


def routing_view(er: Eraser) -> dict:
    """How the current version routes, secret-free: each held-out sample's cluster by id,
    and a digest of each cluster's routing point values (not their keys)."""
    m = er.registry.load()
    out: dict = {k: v for k, v in m.routing.items() if k not in ("routes", "lists", "points")}
    if "routes" in m.routing:
        routes = er.registry.get_tensors(m.routing["routes"])
        id_of = {r.key: r.sample_id for r in er.store.rows()}
        keys = routetable.key_strings(routetable.as_s20(routes["keys"].numpy()))
        out["routes"] = dict(
            sorted((id_of[k], m.keys[c]) for k, c in zip(keys, routes["route"].tolist()))
        )
    out["points"] = {
        c.key: hashlib.sha256(
            er.registry.get_tensors(c.points)["points"].numpy().tobytes()
        ).hexdigest()
        for c in m.clusters
        if c.points is not None
    }
    return out
