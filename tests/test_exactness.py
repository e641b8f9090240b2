"""Acceptance (a): forgetting equals a from-scratch build on the remaining data, bit for bit."""

from __future__ import annotations

import csv

import pytest
from conftest import forget_crashing_before_purge
from model_views import model_view

from eraserd import checks
from eraserd.cost import Replay, Rule
from eraserd.eraser import Eraser
from eraserd.model.features import ensure_features


def write_manifest_without(src, dst, drop: set[str]) -> None:
    with open(src) as f:
        rows = list(csv.reader(f))
    with open(dst, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        w.writerows(
            r if r[1].startswith("/") else [r[0], str(src.parent / r[1]), *r[2:]]
            for r in rows[1:]
            if r[0] not in drop
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "clustering",
    [
        {"n_clusters": 4, "distance_threshold": None},
        {"n_clusters": None, "distance_threshold": 0.3},
        {"n_clusters": 1, "distance_threshold": None, "max_cluster_share": 0.3},
    ],
    ids=["n_clusters", "threshold", "cap"],
)
def test_forget_equals_fresh_build(make_config, digits_data, tmp_path, lite0_32, clustering):
    cfg = make_config("a", clustering=clustering)
    with Eraser(cfg, backbone=lite0_32) as er:
        er.build()
        rows = er.samples()
        sample_pt = next(r for r in rows if r["in_clustering_sample"])
        other_pt = next(r for r in rows if r["split"] == "train" and not r["in_clustering_sample"])
        gone = {sample_pt["sample_id"], other_pt["sample_id"]}
        before = model_view(er)
        assert len(before["keys"]) >= 2, "the test needs several clusters"
        result = er.forget(sample_ids=sorted(gone))
        assert result.reclustered
        after = model_view(er)
        report = checks.verify(er)
    assert report["identical"], report

    write_manifest_without(digits_data / "manifest.csv", tmp_path / "rest.csv", gone)
    fresh_cfg = make_config("b", source=tmp_path / "rest.csv", clustering=clustering)
    with Eraser(fresh_cfg, backbone=lite0_32) as fresh:
        fresh.build()
        expected = model_view(fresh)
    assert after == expected
    assert not gone & {i for ids in after["members"].values() for i in ids}
    assert after["in_sample"] != before["in_sample"], "a sample point left: the sample changed"


@pytest.mark.slow
def test_forget_non_sample_points_retrains_only_affected(make_config, lite0_32):
    cfg = make_config("c")
    with Eraser(cfg, backbone=lite0_32) as er:
        er.build()
        before = er.registry.load()
        blob_bytes = {
            c.key: {f: er.registry.get_blob(getattr(c, f)) for f in ("prompt", "head", "members")}
            for c in before.clusters
        }
        rows = [r for r in er.samples() if r["split"] == "train" and not r["in_clustering_sample"]]
        # Two points from one cluster and one from another: two affected clusters.
        by_cluster: dict[str, list[str]] = {}
        for r in rows:
            by_cluster.setdefault(r["cluster"], []).append(r["sample_id"])
        first, second = sorted(by_cluster, key=lambda k: -len(by_cluster[k]))[:2]
        gone = by_cluster[first][:2] + by_cluster[second][:1]
        result = er.forget(sample_ids=gone)
        after = er.registry.load()

        assert not result.reclustered
        assert sorted(result.affected) == sorted([first, second])
        assert sorted(result.retrained) == sorted([first, second])
        assert after.change.reused == len(after.clusters) - 2
        assert after.prototypes == before.prototypes
        old = {c.key: c for c in before.clusters}
        for c in after.clusters:
            if c.key in (first, second):
                assert c.members != old[c.key].members
                assert (c.prompt, c.head) != (old[c.key].prompt, old[c.key].head)
                assert c.size == old[c.key].size - (2 if c.key == first else 1)
            else:
                assert (c.members, c.prompt, c.head) == (
                    old[c.key].members,
                    old[c.key].prompt,
                    old[c.key].head,
                )
                assert {
                    f: er.registry.get_blob(getattr(c, f)) for f in ("prompt", "head", "members")
                } == blob_bytes[c.key]
        assert checks.verify(er)["identical"]


@pytest.mark.slow
def test_verify_detects_a_model_that_is_not_a_fresh_build(make_config, lite0_32):
    cfg = make_config("d")
    with Eraser(cfg, backbone=lite0_32) as er:
        er.build()
    changed = make_config("d", training={"epochs": 3})
    with Eraser(changed, backbone=lite0_32) as er:
        report = checks.verify(er)
    assert not report["identical"]
    assert report["problems"] == ["train_fingerprint differs"]
    for key, verdict in report["clusters"].items():  # each differing tensor is named
        assert verdict.startswith("differs: prompt (prompt: max |diff| "), verdict
        assert ", head (bias: max |diff| " in verdict and "; weight: max |diff| " in verdict
        assert set(report["details"][f"{key}.head"]) == {"bias", "weight"}


@pytest.mark.slow
def test_forget_retried_after_a_crash_before_purge(make_config, lite0_32):
    """A forget interrupted after the swap but before the purge completes when retried."""
    cfg = make_config("e")
    with Eraser(cfg, backbone=lite0_32) as er:
        er.build()
        victim = next(r["sample_id"] for r in er.samples() if r["in_clustering_sample"])
        forget_crashing_before_purge(er, [victim])
        assert er.registry.current()[0] == 2
    with Eraser(cfg, backbone=lite0_32) as er:
        assert victim in {r.sample_id for r in er.store.rows()}
        result = er.forget(sample_ids=[victim])
        assert result.affected == [] and result.retrained == []
        assert victim not in {r.sample_id for r in er.store.rows()}
        report = checks.verify(er)
        assert report["identical"], report


@pytest.mark.slow
def test_reconcile_purges_what_the_current_version_dropped(make_config, lite0_32):
    """A forget that published and never purged (an older daemon gave such a batch up)
    leaves samples in the store that no cluster holds; the daemon's start purges them."""
    cfg = make_config("r")
    with Eraser(cfg, backbone=lite0_32) as er:
        er.build()
        rows = [r for r in er.samples() if r["split"] == "train"]
        victims = sorted({rows[0]["sample_id"], rows[-1]["sample_id"]})
        assert er.reconcile() == 0  # nothing to do on a consistent state
        forget_crashing_before_purge(er, victims)
    with Eraser(cfg, backbone=lite0_32) as er:
        keys = {r.sample_id: r.key for r in er.store.rows()}
        assert set(victims) <= set(keys)
        assert len(er.registry.list_versions()) == 2
        assert er.reconcile() == 2
        live = {r.sample_id for r in er.store.rows()}
        assert not set(victims) & live
        assert er.store.classify(victims) == ([], [], [f"sample {v}" for v in victims])
        assert not any((er.store.objects / keys[v]).exists() for v in victims)
        assert er.registry.list_versions() == [2]
        assert er.reconcile() == 0
        er.current_partition(er.registry.load())  # consistent again: every member is live


@pytest.mark.slow
def test_bounded_clusters_forget_what_the_cost_model_says(make_config, lite0_32):
    """With a cap: a non-sample deletion retrains only its own cluster, and a sample
    deletion retrains exactly the clusters the cost model's replay predicts; verify holds."""
    clustering = {"n_clusters": 1, "distance_threshold": None, "max_cluster_share": 0.3}
    cfg = make_config("f", clustering=clustering)
    with Eraser(cfg, backbone=lite0_32) as er:
        first = er.build()
        assert len(first.clusters) >= 3, "the cap must split the data"
        assert first.cost["largest_share"] <= 0.3
        assert first.cost["expected_retrain_share"] < 0.5
        rows = [r for r in er.samples() if r["split"] == "train"]
        outside = next(r for r in rows if not r["in_clustering_sample"])
        result = er.forget(sample_ids=[outside["sample_id"]])
        assert not result.reclustered and result.retrained == [outside["cluster"]]

        manifest = er.registry.load()
        part = er.current_partition(manifest)
        train = sorted(part.cluster_of())
        feats = ensure_features(er.store, er.backbone, [r for r in er.store.rows("train")])
        # The clustering did not change: the recluster terms are carried, not replayed, and
        # the direct terms are those of a fresh replay on the remaining data.
        carried = manifest.cost
        assert carried["replayed_train"] == first.cost["train"] == carried["train"] + 1
        assert carried["recluster_share"] == first.cost["recluster_share"]
        fresh = er.current_cost(manifest)
        for key in ("train", "sample", "clusters", "largest_share", "direct_share"):
            assert carried[key] == fresh[key], key
        victim = sorted(part.sample)[0]
        replay = Replay(train, feats, cfg.seed, cfg.clustering.sample_size)
        rule = Rule(None, 1, 0.3)
        predicted = replay.retrained(rule, part, victim)
        result = er.forget(sample_ids=[victim])
        after = er.registry.load()
        assert result.reclustered
        sizes = after.sizes
        assert (sum(sizes[k] for k in result.retrained), len(result.retrained)) == predicted
        assert after.cost["train"] == len(train) - 1
        assert checks.verify(er)["identical"]
