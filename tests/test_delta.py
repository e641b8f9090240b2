"""A forget that keeps the clustering (``delta.py``) writes the version the full path writes,
blob for blob, while reading only the clusters it changes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import tree_bytes

from eraserd import delta, routetable
from eraserd.checks import verify
from eraserd.config import config_from_dict
from eraserd.eraser import Eraser
from eraserd.manifest import Manifest


def comparable(m: Manifest, parent: Manifest) -> dict:
    """A manifest without what differs between two runs of the same forget: times, the
    state dir, and the nearest-point lists (an index; compared as prefixes below)."""
    d = m.to_dict()
    d.pop("created_at")
    d.pop("parent_manifest")  # the parents differ in their times and lists
    lists = {m.routing.get("lists"), parent.routing.get("lists")}
    d["change"]["superseded"] = sorted(set(d["change"].get("superseded", ())) - lists)
    d["config"] = {k: v for k, v in d["config"].items() if k != "state_dir"}
    d["change"].pop("seconds")
    d["change"]["jobs"] = {k: (j["device"], j["attempts"]) for k, j in d["change"]["jobs"].items()}
    d["routing"] = {k: v for k, v in d["routing"].items() if k != "lists"}
    return d


def table_of(er: Eraser) -> routetable.Table:
    return delta._load_table(er.registry, er.registry.load())


@pytest.fixture
def spy(monkeypatch):
    """Records whether each forget took the delta path."""
    taken: list[bool] = []
    real = delta.plan

    def plan(*args, **kwargs):
        out = real(*args, **kwargs)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(delta, "plan", plan)
    return taken


def twins(make_config, lite0_32, tmp_path, **sections):
    """Two identical built states (same secret, same data): ``a`` and a copy ``b``."""
    cfg = make_config("a", **sections)
    with Eraser(cfg, backbone=lite0_32) as er:
        er.build()
    shutil.copytree(cfg.state_dir, tmp_path / "b")
    raw = cfg.to_dict()
    raw["state_dir"] = str(tmp_path / "b")
    return cfg, config_from_dict(raw)


def non_sample(er: Eraser, n: int, skip: int = 0) -> list[str]:
    rows = [s for s in er.samples() if s["split"] == "train" and not s["in_clustering_sample"]]
    return [r["sample_id"] for r in rows[skip : skip + n]]


def forget_both(cfg_a, cfg_b, lite0_32, monkeypatch, spy, ids) -> tuple[Manifest, Manifest]:
    with Eraser(cfg_a, backbone=lite0_32) as er:
        fast_parent = er.registry.load()
        rows = er.store.rows_by_keys(er.store.key_of(i) for i in ids)
        feats = er.store.cached_features([r.key for r in rows], lite0_32.feature_key)
        needles = {f"id {r.sample_id}": r.sample_id.encode() for r in rows}
        for r in rows:
            needles[f"key of {r.sample_id}"] = r.key.encode()
            needles[f"key bytes of {r.sample_id}"] = bytes.fromhex(r.key)
            needles[f"feature of {r.sample_id}"] = np.asarray(feats[r.key]).tobytes()
        fast = er.forget(sample_ids=ids).manifest
        fast_table = table_of(er)
    assert spy[-1] is True, "the delta path should have been taken"
    for path, data in tree_bytes(cfg_a.state_dir):  # the delta path leaves no trace either
        for what, needle in needles.items():
            assert needle not in data, f"{what} found in {path}"
    with monkeypatch.context() as m:
        m.setattr(delta, "plan", lambda *a, **k: None)
        with Eraser(cfg_b, backbone=lite0_32) as er:
            full_parent = er.registry.load()
            full = er.forget(sample_ids=ids).manifest
            full_table = table_of(er)
    assert comparable(fast, fast_parent) == comparable(full, full_parent)
    assert routetable.lists_are_prefixes(fast_table, full_table)
    return fast, full


@pytest.mark.slow
@pytest.mark.parametrize(
    "routing",
    [
        {"method": "neighbors", "neighbors": 5},
        {"method": "neighbors", "neighbors": 2, "points_per_cluster": 3},
        {"method": "prototype"},
    ],
    ids=["neighbors", "capped-points", "prototype"],
)
def test_delta_forgets_equal_the_full_path(
    make_config, lite0_32, tmp_path, monkeypatch, spy, routing
):
    cfg_a, cfg_b = twins(make_config, lite0_32, tmp_path, routing=routing)
    with Eraser(cfg_a, backbone=lite0_32) as er:
        held_out = [s["sample_id"] for s in er.samples() if s["split"] == "test"]
        first = non_sample(er, 1)
    # One training point, then a held-out sample with another training point.
    forget_both(cfg_a, cfg_b, lite0_32, monkeypatch, spy, first)
    with Eraser(cfg_a, backbone=lite0_32) as er:
        second = non_sample(er, 1, skip=5)
    fast, _ = forget_both(cfg_a, cfg_b, lite0_32, monkeypatch, spy, second + held_out[:1])
    assert fast.change.reclustered is False and len(fast.change.retrained) >= 1


@pytest.mark.slow
def test_lists_emptied_by_deletions_are_computed_again(
    make_config, lite0_32, tmp_path, monkeypatch, spy
):
    """Deleting a held-out sample's nearest training points empties its list below k: the
    row is routed again from all points, and still equals the full path."""
    routing = {"method": "neighbors", "neighbors": 1, "points_per_cluster": 4}
    cfg_a, cfg_b = twins(make_config, lite0_32, tmp_path, routing=routing)
    with Eraser(cfg_a, backbone=lite0_32) as er:
        table = table_of(er)
        id_of = {r.key: r.sample_id for r in er.store.rows()}
        sample = {s["sample_id"] for s in er.samples() if s["in_clustering_sample"]}
        # A row whose two listed points are both outside the clustering sample.
        victims = None
        for r in range(len(table.keys)):
            ids = [id_of[k] for k in routetable.key_strings(table.point[r, : table.count[r]])]
            if len(ids) == 2 and not sample & set(ids):
                victims = ids
                break
        assert victims, "no held-out row lists only non-sample points"
    again: list[int] = []
    real = delta._recompute

    def counted(*args, **kwargs):
        inner = real(*args, **kwargs)

        def recompute(keys):
            again.append(len(keys))
            return inner(keys)

        return recompute

    monkeypatch.setattr(delta, "_recompute", counted)
    forget_both(cfg_a, cfg_b, lite0_32, monkeypatch, spy, victims)
    assert again and again[0] >= 1, "the emptied row should have been routed again"
    with Eraser(cfg_a, backbone=lite0_32) as er:
        assert verify(er)["identical"]


@pytest.mark.slow
def test_a_clustering_sample_deletion_takes_the_full_path(make_config, lite0_32, spy):
    cfg = make_config("a")
    with Eraser(cfg, backbone=lite0_32) as er:
        er.build()
        sample_pt = next(s["sample_id"] for s in er.samples() if s["in_clustering_sample"])
        er.forget(sample_ids=[sample_pt])
    assert spy == [False]


@pytest.mark.slow
def test_a_delta_forget_reads_only_the_clusters_it_changes(make_config, lite0_32, spy):
    """The membership blobs a delta forget decodes are those of the deleted point's cluster."""
    cfg = make_config("a", clustering={"n_clusters": 6})
    with Eraser(cfg, backbone=lite0_32) as er:
        er.build()
        victim = non_sample(er, 1)
        m = er.registry.load()
        members = {c.members: c.key for c in m.clusters}
        read: list[str] = []
        real = er.registry.get_json

        def get_json(digest, what="json"):
            if digest in members:
                read.append(members[digest])
            return real(digest, what)

        er.registry.get_json = get_json  # type: ignore[method-assign]
        result = er.forget(sample_ids=victim)
    assert spy == [True]
    assert read == result.affected and len(m.clusters) == 6


@pytest.mark.slow
def test_a_version_with_every_point_in_one_blob_is_served_and_rewritten(
    make_config, lite0_32, spy, digits_data
):
    """Manifests written before per-cluster routing points keep every point in one
    ``routing.points`` blob and have no routes: served alike, and their next forget takes
    the full path and writes the new layout."""
    import dataclasses

    import torch

    cfg = make_config("a")
    with Eraser(cfg, backbone=lite0_32) as er:
        m = er.build()
        pts = [er.registry.get_tensors(c.points)["points"] for c in m.clusters]
        owner = torch.cat([torch.full((len(p),), k, dtype=torch.int64) for k, p in enumerate(pts)])
        old_points = er.registry.put_tensors({"points": torch.cat(pts), "owner": owner})
        old = dataclasses.replace(
            m,
            routing={
                "method": "neighbors",
                "neighbors": m.routing["neighbors"],
                "points": old_points,
            },
            clusters=tuple(dataclasses.replace(c, points=None) for c in m.clusters),
        )
        images = sorted((digits_data / "img").glob("*.png"))[:12]
        new_pred = [
            (p.label, p.cluster)
            for p in map(er.predictor().predict_bytes, [i.read_bytes() for i in images])
        ]
        er.registry.swap(old.version, er.registry.write_version(old))
        assert er.registry.load().routing == old.routing
        old_pred = [
            (p.label, p.cluster)
            for p in map(er.predictor().predict_bytes, [i.read_bytes() for i in images])
        ]
        assert old_pred == new_pred
        result = er.forget(sample_ids=non_sample(er, 1))
        assert spy == [False]
        assert "routes" in result.manifest.routing and "points" not in result.manifest.routing
        assert all(c.points for c in result.manifest.clusters)
        assert verify(er)["identical"]


@pytest.mark.slow
def test_random_groups_forget_on_the_delta_path_and_stay_exact(
    make_config, lite0_32, tmp_path, monkeypatch, spy
):
    """``clustering.method: random``: a non-sample deletion finds its group by the hash of its
    id and takes the delta path, equal to the full path; a clustering-sample deletion takes
    the full path and still retrains its own group only; the result is a fresh build's."""
    random = {"method": "random", "n_clusters": 4, "distance_threshold": None}
    cfg_a, cfg_b = twins(make_config, lite0_32, tmp_path, clustering=random)
    with Eraser(cfg_a, backbone=lite0_32) as er:
        first = non_sample(er, 1)
    fast, _ = forget_both(cfg_a, cfg_b, lite0_32, monkeypatch, spy, first)
    assert len(fast.change.retrained) == 1 and fast.change.reclustered is False
    with Eraser(cfg_a, backbone=lite0_32) as er:
        point = next(s["sample_id"] for s in er.samples() if s["in_clustering_sample"])
        result = er.forget(sample_ids=[point])
        assert spy[-1] is False
        assert result.manifest.change.reclustered is True
        assert len(result.manifest.change.retrained) == 1
        assert [c.key for c in result.manifest.clusters] == [c.key for c in fast.clusters]
        assert verify(er)["identical"]
