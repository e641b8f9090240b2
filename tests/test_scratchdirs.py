"""Scratch directories holding private copies (``scratchdirs.py``): each names its owner
process, and those whose owner is gone are swept. The last test SIGKILLs a real
``eraserd verify`` in the middle of its rebuild: the copy it leaves is gone after the next
forget, and with it every byte of the forgotten sample."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import dead_pid, tree_bytes
from patience import die_with_parent

from eraserd.scratchdirs import OWNER, VERIFY, make_owned, sweep_stale


def test_a_live_owner_keeps_its_directory(tmp_path):
    mine = make_owned(tmp_path, "x-")
    assert mine.parent == tmp_path and mine.name.startswith("x-")
    assert mine.stat().st_mode & 0o777 == 0o700
    assert (mine / OWNER).read_text().split()[0] == str(os.getpid())
    assert sweep_stale(tmp_path, "x-") == [] and mine.is_dir()


def test_the_directories_of_dead_owners_are_swept_and_nothing_else(tmp_path):
    stale = make_owned(tmp_path, "x-")
    (stale / "copy.bin").write_bytes(b"private")
    (stale / OWNER).write_text(f"{dead_pid()} 1\n")
    reused = make_owned(tmp_path, "x-")  # this process's pid, another process's start time
    (reused / OWNER).write_text(f"{os.getpid()} 1\n")
    live = make_owned(tmp_path, "x-")
    no_owner = tmp_path / "x-unowned"
    no_owner.mkdir()
    not_a_dir = tmp_path / "x-file"
    not_a_dir.write_text("")
    other = make_owned(tmp_path, "y-")
    (other / OWNER).write_text(f"{dead_pid()}\n")
    garbled = make_owned(tmp_path, "x-")
    (garbled / OWNER).write_text("not a pid\n")

    assert sweep_stale(tmp_path, "x-") == sorted([stale, reused])
    assert not stale.exists() and not reused.exists()
    for kept in (live, no_owner, not_a_dir, other, garbled):
        assert kept.exists(), kept
    assert sweep_stale(tmp_path / "missing", "x-") == []


@pytest.mark.slow
def test_a_killed_verify_leaves_no_copy_of_a_forgotten_sample(make_config, lite0_32, tmp_path):
    from eraserd.eraser import Eraser

    cfg = make_config("kv")
    config = tmp_path / "kv.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    with Eraser(cfg, backbone=lite0_32) as er:
        er.build()
        row = next(r for r in er.samples() if not r["in_clustering_sample"])
        victim = row["sample_id"]
        raw = er.store.read_object(next(r for r in er.store.rows() if r.sample_id == victim))

    proc = subprocess.Popen(
        [sys.executable, "-m", "eraserd", "verify", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        # Killed once its copy of the live data is made and its rebuild has begun.
        deadline = time.monotonic() + 600
        while not list(cfg.state_dir.glob(f"{VERIFY}*/registry")):
            assert proc.poll() is None, "verify ended before it could be killed"
            assert time.monotonic() < deadline, "verify never started its rebuild"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    [left] = cfg.state_dir.glob(f"{VERIFY}*")
    assert any(raw in data for _, data in tree_bytes(left)), "the copy should hold the sample"

    with Eraser(cfg, backbone=lite0_32) as er:
        er.forget(sample_ids=[victim])
    assert not left.exists()
    for path, data in tree_bytes(cfg.state_dir):
        assert raw not in data, f"the forgotten sample's bytes are in {path}"
    assert not list(Path(cfg.state_dir).glob(f"{VERIFY}*"))
