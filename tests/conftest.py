"""Shared fixtures: real digits written as PNG files, small but real configs, a real backbone.

Nothing here is mocked: tests run the pretrained EfficientNet-Lite0 at a small image size, on
real scikit-learn digits, with few epochs so the suite stays fast on 2 CPU cores. Importing
this file loads neither torch nor scikit-learn: the pure tests (``make test-fast``) run
without them, and the fixtures that need them import them.
"""

from __future__ import annotations

import eraserd  # noqa: F401  # isort: skip  (first: caps OpenMP spinning before torch loads)
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eraserd.config import Config, config_from_dict

N_DIGITS = 240


def pytest_terminal_summary(terminalreporter):
    """What the tests measured (``record_property("summary", ...)``), once at the end of the
    run, passed or failed."""
    lines = [
        f"{r.nodeid}: {value}"
        for reports in terminalreporter.stats.values()
        for r in reports
        if getattr(r, "when", None) == "call"
        for name, value in getattr(r, "user_properties", [])
        if name == "summary"
    ]
    if lines:
        terminalreporter.write_sep("=", "measured")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _no_orphan_daemons():
    """Every daemon a test starts is killed when the test ends, pass or fail; one that a
    module-scoped fixture started before the test is left to that fixture."""
    util = sys.modules.get("daemon_util")
    keep = len(util.LIVE) if util else 0
    yield
    util = sys.modules.get("daemon_util")
    if util is not None:
        util.reap(keep)


@pytest.fixture(autouse=True, scope="session")
def _no_daemon_outlives_the_session():
    yield
    util = sys.modules.get("daemon_util")
    if util is not None:
        util.reap()


def digit_png(image: np.ndarray) -> bytes:
    pixels = np.clip(np.rint(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory) -> Path:
    """A folder of real digit PNGs plus ``manifest.csv`` with subjects (3 samples each)."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    d = load_digits()
    rows = []
    for i in range(N_DIGITS):
        rel = f"img/{i:04d}.png"
        (root / "img").mkdir(exist_ok=True)
        (root / rel).write_bytes(digit_png(d.images[i]))
        rows.append((f"s{i:04d}", rel, str(int(d.target[i])), f"subj{i // 3:03d}"))
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "path", "label", "subject_id"])
        w.writerows(rows)
    return root


def small_raw(state_dir: Path, source: Path | str, **sections) -> dict:
    raw = {
        "state_dir": str(state_dir),
        "seed": 7,
        "data": {"source": str(source), "test_fraction": 0.2},
        "backbone": {
            "name": "efficientnet_lite0",
            "weights": "builtin:efficientnet_lite0",
            "image_size": 32,
        },
        "clustering": {"sample_size": 60, "n_clusters": 4, "distance_threshold": None},
        "prompt": {"width": 4},
        "training": {
            "epochs": 2,
            "batch_size": 16,
            "warmup_epochs": 1,
            "augment": {"crop_padding": 2, "hflip": False},
        },
        "runtime": {"device": "cpu", "num_threads": 2, "deterministic": True},
        # In-process training keeps most tests fast; the executor tests and the daemon tests
        # run the real worker pool and Ray.
        "executor": {"backend": "inline"},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(raw.get(name), dict):
            raw[name] = {**raw[name], **values}
        else:
            raw[name] = values
    return raw


@pytest.fixture
def make_config(tmp_path, digits_data):
    """Build a small, real config; keyword sections override the defaults above."""

    def make(state: str = "state", source: Path | str | None = None, **sections) -> Config:
        src = source if source is not None else digits_data / "manifest.csv"
        return config_from_dict(small_raw(tmp_path / state, src, **sections))

    return make


@pytest.fixture
def prebuilt(tmp_path, tmp_path_factory, digits_data, lite0_32):
    """``prebuilt(**daemon)``: a daemon config (``daemon_util.prebuilt_config``) whose state
    holds a first version already. Only the end-to-end test lets the daemon build its own."""
    from daemon_util import built_state, prebuilt_config

    def make(**daemon) -> Path:
        return prebuilt_config(
            tmp_path,
            digits_data / "manifest.csv",
            lite0_32,
            built_state(tmp_path_factory),
            **daemon,
        )

    return make


@pytest.fixture(scope="session")
def lite0_32():
    """The real pretrained backbone, loaded once per session (it is frozen and read-only)."""
    from eraserd.model.backbone import load_backbone  # torch: only for tests that need it

    cfg = config_from_dict(small_raw(Path("unused"), "builtin:digits"))
    return load_backbone(cfg.backbone, cfg.runtime)


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped): the owner of a killed run."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def tree_bytes(root: Path) -> list[tuple[Path, bytes]]:
    """Every regular file under ``root`` with its bytes (SQLite side files included)."""
    out = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out.append((p, p.read_bytes()))
    return out


def forget_crashing_before_purge(er, sample_ids: list[str]) -> None:
    """A forget that is killed after the swap and before the purge (simulated in-process:
    the purge raises ``KeyboardInterrupt``). ``er`` must be closed afterwards."""

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash")

    er.store.purge = crash
    with pytest.raises(KeyboardInterrupt):
        er.forget(sample_ids=sample_ids)
