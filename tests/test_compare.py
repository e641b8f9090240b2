"""What ``verify`` says when a rebuild differs: real registries on disk, hand-made versions."""

from __future__ import annotations

import torch

from eraserd.compare import compare_manifests, differences
from eraserd.registry import Registry


def version(reg: Registry, prompt: torch.Tensor, weight: torch.Tensor, members: list[str]):
    head = reg.put_tensors({"weight": weight, "bias": torch.zeros(3)})
    cluster = {
        "key": "c1",
        "members": reg.put_json({"members": members, "sample": []}),
        "prompt": reg.put_tensors({"prompt": prompt}),
        "head": head,
        "size": len(members),
    }
    keep = {
        "key": "c2",
        "members": reg.put_json({"members": ["z"], "sample": []}),
        "prompt": reg.put_tensors({"prompt": torch.ones(2)}),
        "head": reg.put_tensors({"weight": torch.ones(3, 2), "bias": torch.ones(3)}),
        "size": 1,
    }
    return {
        "version": 4,
        "accuracy": 0.5,
        "backbone": {},
        "classes": ["a", "b", "c"],
        "train_fingerprint": "t",
        "cluster_fingerprint": "c",
        "clustering": {},
        "prototypes": reg.put_tensors({"prototypes": torch.zeros(2, 2)}),
        "clusters": [cluster, keep],
    }


def test_identical_versions_say_so(tmp_path):
    a, b = Registry(tmp_path / "a"), Registry(tmp_path / "b")
    w = torch.arange(6.0).reshape(3, 2)
    va, vb = version(a, torch.zeros(4), w, ["x", "y"]), version(b, torch.zeros(4), w, ["x", "y"])
    assert differences(va, vb, a, b) == {}
    report = compare_manifests(va, vb, {})
    assert report["identical"] and set(report["clusters"].values()) == {"identical"}


def test_a_differing_cluster_names_its_tensors_and_members(tmp_path):
    a, b = Registry(tmp_path / "a"), Registry(tmp_path / "b")
    w = torch.arange(6.0).reshape(3, 2)
    nudged = w.clone()
    nudged[1, 1] = torch.nextafter(w[1, 1], torch.tensor(10.0))  # one float32 step
    va = version(a, torch.zeros(4), w, ["x", "y"])
    vb = version(b, torch.tensor([0.0, 0.0, 0.5, 0.0]), nudged, ["x", "w", "v"])
    details = differences(va, vb, a, b)
    assert details["c1.prompt"] == {"prompt": "max |diff| 0.5, 1 of 4 values differ"}
    assert details["c1.head"] == {"weight": "max |diff| 2.38e-07, 1 of 6 values differ"}
    assert details["c1.members"] == "1 only in current, 2 only in rebuild"
    assert set(details) == {"c1.prompt", "c1.head", "c1.members"}
    report = compare_manifests(va, vb, details)
    assert not report["identical"] and report["problems"] == []
    assert report["clusters"]["c2"] == "identical"
    assert report["clusters"]["c1"] == (
        "differs: members (1 only in current, 2 only in rebuild), "
        "prompt (prompt: max |diff| 0.5, 1 of 4 values differ), "
        "head (weight: max |diff| 2.38e-07, 1 of 6 values differ), size"
    )
    assert report["details"] == details


def test_shapes_and_prototypes(tmp_path):
    a, b = Registry(tmp_path / "a"), Registry(tmp_path / "b")
    w = torch.arange(6.0).reshape(3, 2)
    va, vb = version(a, torch.zeros(4), w, ["x"]), version(b, torch.zeros(5), w, ["x"])
    vb["prototypes"] = b.put_tensors({"prototypes": torch.ones(2, 2)})
    details = differences(va, vb, a, b)
    assert details["c1.prompt"] == {"prompt": "torch.float32[4] vs torch.float32[5]"}
    assert details["prototypes"] == {"prototypes": "max |diff| 1, 4 of 4 values differ"}
    report = compare_manifests(va, vb, details)
    assert report["problems"] == [
        "prototypes (prototypes: max |diff| 1, 4 of 4 values differ) differs"
    ]
