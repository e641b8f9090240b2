"""The typed manifest: the file's exact layout both ways, the defaults of manifests written
by older releases, and a clear error for a malformed one."""

from __future__ import annotations

import pytest

from eraserd.errors import RegistryError
from eraserd.manifest import FORMAT, ChangeRecord, JobRecord, Manifest

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`


def written() -> dict:
    """A manifest as the builder writes it today."""
    return {
        "format": FORMAT,
        "version": 3,
        "parent": 2,
        "parent_manifest": "ab" * 32,
        "created_at": "2026-11-30T01:02:03+00:00",
        "config_hash": "cfg",
        "config": {"training": {"epochs": 12, "batch_size": 32}, "runtime": {}},
        "backbone": {"name": "efficientnet_lite0", "fingerprint": "fp"},
        "classes": ["0", "1"],
        "train_fingerprint": "tf",
        "cluster_fingerprint": "cf",
        "clustering": {"sample_count": 5, "sample_hash": "sh"},
        "prototypes": "p" * 64,
        "routing": {"method": "knn", "neighbors": 5, "points": "q" * 64},
        "clusters": [
            {
                "key": f"c{i}",
                "size": 10 + i,
                "sample_count": i,
                "members": f"m{i}",
                "member_set": f"s{i}",
                "prompt": f"pr{i}",
                "head": f"h{i}",
                "test_members": f"t{i}",
                "test_n": 4,
                "test_correct": 3,
                "platform": "cpu/x86",
            }
            for i in range(3)
        ],
        "samples": {"train": 33, "test": 12},
        "accuracy": 0.75,
        "cost": {"expected_retrain_share": 0.1, "recluster_share": 0.5},
        "change": {
            "kind": "forget",
            "forgotten": 2,
            "reclustered": False,
            "retrained": ["c1"],
            "reused": 2,
            "jobs": {"c1": {"seconds": 1.5, "device": "cpu", "attempts": 1}},
            "affected": ["c1"],
            "batch": "batch-4",
            "seconds": 2.25,
            "superseded": ["old"],
        },
    }


def test_a_manifest_reads_and_writes_back_field_for_field():
    raw = written()
    m = Manifest.from_dict(raw)
    assert m.to_dict() == raw
    assert m.keys == ("c0", "c1", "c2")
    assert m.sizes == {"c0": 10, "c1": 11, "c2": 12}
    assert m.change.jobs["c1"] == JobRecord(1.5, "cpu", 1)
    assert m.blobs() == {"p" * 64, "q" * 64} | {
        f"{f}{i}" for f in "m pr h".split() for i in range(3)
    }
    assert m.training == {"epochs": 12, "batch_size": 32} and m.deterministic
    assert m.cluster("c2").size == 12 and m.cluster("zz") is None


def test_with_change_replaces_only_the_change():
    m = Manifest.from_dict(written())
    n = m.with_change(superseded=("a", "b"))
    assert n.change.superseded == ("a", "b") and n.change.batch == "batch-4"
    assert n.clusters == m.clusters and m.change.superseded == ("old",)


def test_an_older_manifest_gets_the_documented_defaults():
    raw = written()
    for c in raw["clusters"]:
        del c["member_set"], c["platform"], c["sample_count"]
    del raw["cost"], raw["routing"], raw["change"]["jobs"], raw["change"]["superseded"]
    m = Manifest.from_dict(raw)
    assert m.cost is None and m.routing == {"method": "prototype"}
    assert m.clusters[0].member_set is None and m.clusters[0].platform is None
    assert m.change.jobs == {} and m.change.superseded is None
    assert "member_set" not in m.clusters[0].to_dict()
    assert "superseded" not in m.change.to_dict()
    assert ChangeRecord.from_dict({}).kind == "build"


def test_a_malformed_manifest_names_the_file_and_what_is_wrong():
    raw = written()
    del raw["clusters"][1]["head"]
    with pytest.raises(
        RegistryError, match=r"^v/000003.json: malformed manifest \(KeyError: 'head'\)$"
    ):
        Manifest.from_dict(raw, where="v/000003.json")
    with pytest.raises(RegistryError, match="unknown manifest format 'other/1'"):
        Manifest.from_dict({**written(), "format": "other/1"})
