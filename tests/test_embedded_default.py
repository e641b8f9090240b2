"""The embedded default (config.example.yaml) builds on 2 CPU cores with >= 90% accuracy,
and a random single deletion retrains at most 15% of its training data."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml

from eraserd.config import load_config
from eraserd.eraser import Eraser

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


@pytest.mark.slow
def test_embedded_default_builds_accurately(tmp_path, record_property):
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["state_dir"] = str(tmp_path / "state")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "config.yaml")
    start = time.perf_counter()
    with Eraser(cfg) as er:
        manifest = er.build()
    seconds = time.perf_counter() - start
    record_property(
        "summary",
        f"embedded default: {len(manifest.clusters)} clusters, "
        f"accuracy {manifest.accuracy:.4f}, build {seconds:.1f}s, "
        f"retrain/deletion {manifest.cost['expected_retrain_share']:.3f}",
    )
    assert manifest.samples == {"train": 1464, "test": 333}
    assert manifest.accuracy >= 0.90
    assert manifest.config["backbone"]["weights"] == "builtin:efficientnet_lite0"
    assert len(manifest.clusters) >= 2
    cap = raw["clustering"]["max_cluster_share"]
    assert max(c.size for c in manifest.clusters) <= cap * 1464
    assert manifest.cost["largest_share"] <= cap
    assert manifest.cost["expected_retrain_share"] <= 0.15
    shutil.rmtree(tmp_path / "state")
