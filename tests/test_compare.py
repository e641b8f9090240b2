"""What ``verify`` says when a rebuild differs: real registries on disk, hand-made versions."""

from __future__ import annotations

import dataclasses

import torch

from eraserd.compare import compare_manifests, differences
from eraserd.manifest import FORMAT, Manifest
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
    return Manifest.from_dict(
        {
            "format": FORMAT,
            "version": 4,
            "created_at": "2026-11-30T00:00:00+00:00",
            "config_hash": "h",
            "config": {},
            "samples": {"train": len(members) + 1, "test": 0},
            "accuracy": 0.5,
            "backbone": {},
            "classes": ["a", "b", "c"],
            "train_fingerprint": "t",
            "cluster_fingerprint": "c",
            "clustering": {},
            "prototypes": reg.put_tensors({"prototypes": torch.zeros(2, 2)}),
            "clusters": [cluster, keep],
        }
    )


def on_platform(m: Manifest, platform: str) -> Manifest:
    """``m`` with its first cluster trained on ``platform``."""
    first = dataclasses.replace(m.clusters[0], platform=platform)
    return dataclasses.replace(m, clusters=(first, *m.clusters[1:]))


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
    vb = dataclasses.replace(vb, prototypes=b.put_tensors({"prototypes": torch.ones(2, 2)}))
    details = differences(va, vb, a, b)
    assert details["c1.prompt"] == {"prompt": "torch.float32[4] vs torch.float32[5]"}
    assert details["prototypes"] == {"prototypes": "max |diff| 1, 4 of 4 values differ"}
    report = compare_manifests(va, vb, details)
    assert report["problems"] == [
        "prototypes (prototypes: max |diff| 1, 4 of 4 values differ) differs"
    ]


def test_a_cluster_trained_on_another_platform_says_so(tmp_path):
    a, b = Registry(tmp_path / "a"), Registry(tmp_path / "b")
    w = torch.arange(6.0).reshape(3, 2)
    va = version(a, torch.zeros(4), w, ["x", "y"])
    vb = version(b, torch.zeros(4), w + 1e-6, ["x", "y"])
    va = on_platform(va, "torch 2.14.1; cpu AVX2")
    vb = on_platform(vb, "torch 2.14.1; cpu AVX512")
    report = compare_manifests(va, vb, differences(va, vb, a, b))
    assert not report["identical"]
    verdict = report["clusters"]["c1"]
    assert verdict.startswith(
        "built on a different numeric platform (torch 2.14.1; cpu AVX2; "
        "rebuilt on torch 2.14.1; cpu AVX512): head (weight: max |diff| "
    ), verdict
    # Same platform, or different members: a plain difference, not the platform's doing.
    vb = on_platform(vb, "torch 2.14.1; cpu AVX2")
    assert compare_manifests(va, vb)["clusters"]["c1"] == "differs: head"


def test_a_real_build_records_its_numeric_platform(make_config, lite0_32):
    from eraserd.eraser import Eraser
    from eraserd.numerics import numeric_platform

    cfg = make_config("p", clustering={"n_clusters": 2}, training={"epochs": 1, "warmup_epochs": 0})
    with Eraser(cfg, backbone=lite0_32) as er:
        manifest = er.build()
    assert {c.platform for c in manifest.clusters} == {numeric_platform("cpu")}
    assert numeric_platform("cpu").startswith(f"torch {torch.__version__}; cpu ")
