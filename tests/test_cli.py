"""The offline CLI, and acceptance (c): clear errors with nothing changed. A build and a
verify go through the real ``eraserd`` console script; the other commands run the same click
commands in this process."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_util import eraserd
from conftest import small_raw, tree_bytes

ERASERD = str(Path(sys.executable).parent / "eraserd")


def script(*args, check=True) -> subprocess.CompletedProcess:
    """``eraserd ARGS`` through the real console script, in its own process."""
    proc = subprocess.run([ERASERD, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"eraserd {args} failed ({proc.returncode}): {proc.stderr}")
    return proc


def run(*args, check=True) -> subprocess.CompletedProcess:
    return eraserd(*args, check=check)


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def snapshot(state: Path) -> dict[str, str]:
    """Hashes of every file but the lock file (which names the last process that held it)."""
    return {
        str(p.relative_to(state)): hashlib.sha256(d).hexdigest()
        for p, d in tree_bytes(state)
        if p.name != "eraserd.lock"
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory, digits_data):
    """One real build through the CLI, shared read-only by the tests below (they copy it)."""
    root = tmp_path_factory.mktemp("cli")
    cfg = write_config(
        root / "config.yaml", small_raw(root / "state", digits_data / "manifest.csv")
    )
    out = json.loads(script("build", "--config", cfg, "--json").stdout)
    assert out["built"] and out["version"] == 1 and out["clusters"] >= 2
    return root


@pytest.fixture
def copy(built, tmp_path, digits_data):
    shutil.copytree(built / "state", tmp_path / "state")
    return write_config(
        tmp_path / "config.yaml", small_raw(tmp_path / "state", digits_data / "manifest.csv")
    )


@pytest.mark.slow
def test_build_info_samples_predict_forget_verify(copy, digits_data):
    again = json.loads(run("build", "--config", copy, "--if-missing", "--json").stdout)
    assert again == {"built": False, "version": 1}
    refused = run("build", "--config", copy, check=False)
    assert refused.returncode == 1 and "--force" in refused.stderr

    info = json.loads(run("info", "--config", copy, "--json").stdout)
    assert info["version"] == 1 and info["samples"]["train"] + info["samples"]["test"] == 240
    assert sum(info["cluster_sizes"].values()) == info["samples"]["train"]
    assert "accuracy" in run("info", "--config", copy).stdout

    rows = json.loads(run("samples", "--config", copy, "--json").stdout)
    assert len(rows) == 240
    key = next(r["cluster"] for r in rows if r["cluster"])
    only = json.loads(run("samples", "--config", copy, "--cluster", key, "--json").stdout)
    assert only and all(r["cluster"] == key for r in only)
    held = json.loads(run("samples", "--config", copy, "--cluster", "-", "--json").stdout)
    assert held == [r for r in rows if r["split"] == "test"] and held
    lines = run("samples", "--config", copy).stdout.splitlines()
    assert len(lines) == 240 and all(len(line.split("\t")) == 5 for line in lines)
    assert all(line.split("\t")[4] in ("sample", "-") for line in lines)
    bad = run("samples", "--config", copy, "--cluster", "nope", check=False)
    assert bad.returncode == 5 and "'-' for held-out samples" in bad.stderr

    preds = json.loads(
        run(
            "predict",
            "--config",
            copy,
            digits_data / "img/0000.png",
            digits_data / "img/0001.png",
            "--json",
        ).stdout
    )
    assert [p["version"] for p in preds] == [1, 1]
    assert all(
        p["cluster"] in info["cluster_sizes"] and p["label"] in info["classes"] for p in preds
    )

    ids = copy.parent / "ids.txt"
    victim = next(r for r in rows if r["split"] == "train" and not r["in_clustering_sample"])
    ids.write_text(f"# forget request\n{victim['sample_id']}\nsubject:subj010\n")
    out = json.loads(run("forget", "--config", copy, "--from-file", ids, "--json").stdout)
    assert out["version"] == 2 and out["forgotten"] == 4
    report = json.loads(script("verify", "--config", copy, "--json").stdout)
    assert report["identical"] and report["version"] == 2
    assert "identical to a from-scratch rebuild" in run("verify", "--config", copy).stdout


def test_thresholds_table(copy):
    # The text form, kept small: the JSON below checks the numbers.
    out = run("thresholds", "-c", copy, "--points", "2", "--caps", "none", "--evaluations", "1")
    table = json.loads(
        run(
            "thresholds",
            "-c",
            copy,
            "--points",
            "5",
            "--caps",
            "none,0.3",
            "--evaluations",
            "64",
            "--json",
        ).stdout
    )
    configured = [t for t in table if t["configured"]]
    assert len(configured) == 1 and table[0]["configured"]
    # The configured setting's cost is what `info` reports for the built model.
    info = json.loads(run("info", "-c", copy, "--json").stdout)
    assert configured[0]["expected_retrain_share"] == info["expected_retrain_share"]
    assert configured[0]["largest_share"] == info["largest_cluster_share"]
    free = [t for t in table if t["max_cluster_share"] is None and not t["configured"]]
    capped = [t for t in table if t["max_cluster_share"] == 0.3]
    assert len(free) == len(capped) >= 4
    by_t = sorted(free, key=lambda t: -t["threshold"])
    counts = [t["clusters"] for t in by_t]
    assert counts == sorted(counts) and counts[0] == 1
    assert by_t[0]["expected_retrain_share"] == 1.0 and by_t[0]["largest_share"] == 1.0
    for a, b in zip(free, capped):
        assert a["threshold"] == b["threshold"] and b["largest_share"] <= a["largest_share"]
    assert min(t["expected_retrain_share"] for t in capped) < 0.5
    # The cap holds at every threshold, and the table says so.
    assert all(t["largest_share"] <= 0.3 and not t["over_cap"] for t in capped)
    assert all(not t["over_cap"] for t in free)
    assert "<- configured" in out.stdout and "retrain/del" in out.stdout
    bad = run("thresholds", "-c", copy, "--caps", "0.3,big", check=False)
    assert bad.returncode == 2 and "'big' is not a share in (0, 1]" in bad.stderr


def test_config_errors_name_the_key(tmp_path, digits_data):
    raw = small_raw(tmp_path / "state", digits_data / "manifest.csv")
    raw["training"]["epoch"] = 3
    bad = run("build", "--config", write_config(tmp_path / "a.yaml", raw), check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("eraserd: error: training.epoch: unknown key")
    raw = small_raw(tmp_path / "state", digits_data / "manifest.csv", seed="seven")
    bad = run("build", "--config", write_config(tmp_path / "b.yaml", raw), check=False)
    assert bad.returncode == 2 and "seed: expected an integer, got 'seven'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "state").exists(), "a bad config must not create state"


def test_invalid_yaml_is_one_line_naming_the_file_and_the_place(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("state_dir: s\ndata: [unclosed\n")
    out = run("info", "--config", bad, check=False)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"eraserd: error: {bad}: not valid YAML: line 3, column 1: expected ',' or ']', but "
        "got '<stream end>' (while parsing a flow sequence)"
    ]


@pytest.mark.parametrize(
    "cmd",
    [
        (ERASERD, "info", "--json"),  # --config missing
        (ERASERD, "info", "--json", "--config", "x.yaml", "--bogus"),
        (ERASERD, "--json", "no-such-command"),
        (str(Path(ERASERD).parent / "eraserctl"), "status", "--json", "--bogus"),
    ],
)
def test_usage_errors_honour_json(cmd, tmp_path):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    error = json.loads(out.stdout)
    assert error["type"] in ("MissingParameter", "NoSuchOption", "UsageError"), error
    assert error["error"] and out.stderr == ""


def test_missing_data_path(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", small_raw(tmp_path / "state", tmp_path / "nope"))
    bad = run("build", "--config", cfg, "--json", check=False)
    assert bad.returncode == 3
    assert "path does not exist" in json.loads(bad.stdout)["error"]
    assert not (tmp_path / "state" / "registry").exists()


def test_predict_checks_its_files_before_loading_a_model(tmp_path):
    """A missing image is reported as such, before the backbone loads or a model is needed:
    this state dir has no model at all, which would otherwise be exit 5."""
    cfg = write_config(tmp_path / "c.yaml", small_raw(tmp_path / "state", tmp_path / "nope"))
    bad = run("predict", "--config", cfg, "--json", str(tmp_path / "missing.png"), check=False)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "missing.png: cannot read" in json.loads(bad.stdout)["error"]


@pytest.mark.slow
def test_unknown_or_forgotten_ids_change_nothing(copy):
    state = copy.parent / "state"
    before = snapshot(state)
    bad = run(
        "forget", "--config", copy, "--sample-id", "s0001", "--sample-id", "nobody", check=False
    )
    assert bad.returncode == 4
    assert "unknown id(s): sample nobody; nothing was changed" in bad.stderr
    assert snapshot(state) == before
    run("forget", "--config", copy, "--subject-id", "subj002")
    after = snapshot(state)
    again = run(
        "forget", "--config", copy, "--subject-id", "subj002", "--sample-id", "s0001", check=False
    )
    assert again.returncode == 4 and "already forgotten: subject subj002" in again.stderr
    assert snapshot(state) == after
    none = run("forget", "--config", copy, check=False)
    assert none.returncode == 1 and "name at least one" in none.stderr


@pytest.mark.slow
def test_corrupt_blob_is_refused(copy, digits_data):
    state = copy.parent / "state"
    manifest = json.loads((state / "registry/versions/000001.json").read_text())
    head = manifest["clusters"][0]["head"]
    path = state / "registry/blobs" / head[:2] / f"{head}.bin"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    for args in (("predict", digits_data / "img/0000.png"), ("verify",)):
        bad = run(*args, "--config", copy, check=False)
        assert bad.returncode == 5, bad.stderr
        assert f"blob {head[:12]} is corrupt (hash mismatch" in bad.stderr
    bad = run("forget", "--config", copy, "--sample-id", "s0001", check=False)
    assert bad.returncode == 5 and "corrupt" in bad.stderr
    assert (state / "registry/CURRENT").read_text().split()[0] == "1"


def test_python_dash_m_runs_the_same_commands():
    out = subprocess.run(
        [sys.executable, "-m", "eraserd", "--help"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: eraserd ")
    assert "verify" in out.stdout and "run" in out.stdout


@pytest.mark.parametrize(
    "command",
    [
        ["info"],
        ["samples"],
        ["samples", "--cluster", "-"],
        ["predict", "IMAGE"],
        ["verify"],
        ["audit", "verify"],
        ["plan", "--rate", "5/h", "--deadline", "72h"],
        ["simulate", "--rate", "5/h"],
        ["forget", "--sample-id", "s0001"],
    ],
)
def test_a_command_that_needs_a_model_creates_nothing_in_a_new_state_dir(
    tmp_path, digits_data, command
):
    from click.testing import CliRunner

    from eraserd.cli import main

    config = write_config(
        tmp_path / "config.yaml", small_raw(tmp_path / "state", digits_data / "manifest.csv")
    )
    args = [str(digits_data / "img/0000.png") if a == "IMAGE" else a for a in command]
    out = CliRunner().invoke(main, [*args, "--config", str(config)])
    assert out.exit_code == 5, out.output
    assert f"no model yet in {tmp_path / 'state'}: run `eraserd build` first" in out.output
    assert not (tmp_path / "state").exists()
