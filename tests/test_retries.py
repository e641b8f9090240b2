"""An acknowledged deletion is never dropped: crashes, dead workers and full disks are
retried; only a deadline that passes unpublished (or an invalid batch) fails a request, closed
and counted. Real daemons, real SIGKILLs, real SQLite; the full disk is a fault point
(``eraserd/faults.py``) that raises ENOSPC where the disk would."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from conftest import tree_bytes
from daemon_util import BIN, DaemonProc, ctl
from patience import run_patiently
from prometheus_client.parser import text_string_to_metric_families

from eraserd.config import config_from_dict
from eraserd.eraser import Eraser

FAST_RETRIES = {"retry_backoff_s": 0.2, "retry_backoff_max_s": 1.0}


@pytest.fixture
def config(prebuilt) -> Path:
    return prebuilt(window=3600.0, **FAST_RETRIES)  # batches start on an explicit flush only


def request(d: DaemonProc, rid: str) -> dict:
    code, r = d.call("GET", f"/v1/deletions/{rid}")
    assert code == 200, r
    return r


def submit(d: DaemonProc, body: dict) -> str:
    code, r = d.call("POST", "/v1/deletions", body)
    assert code == 202, r
    return r["id"]


def flush(d: DaemonProc) -> None:
    assert d.call("POST", "/v1/flush")[0] == 202


def deadline_in(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


def metrics(d: DaemonProc) -> dict[tuple, float]:
    with urllib.request.urlopen(d.url + "/metrics", timeout=60) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def raw_ids_left(state: Path, ids: list[bytes]) -> list[str]:
    return [f"{i!r} in {p}" for p, data in tree_bytes(state) for i in ids if i in data]


@pytest.mark.slow
def test_a_published_batch_is_finished_however_often_the_daemon_died(config):
    """Defect: a batch whose version was already current was abandoned by the attempt limit,
    its requests marked failed and its samples left in the store."""
    first = DaemonProc(config, crashpoint="swapped")
    first.wait_ready()
    # A deadline that passes while the daemon is down: a published batch still completes.
    rid = submit(first, {"sample_ids": ["s0010", "s0011"], "deadline": deadline_in(3)})
    flush(first)
    assert first.wait_exit() == -9, "the crash point should SIGKILL the daemon after the swap"
    first.log.close()
    # Many more restarts than any attempt limit would allow.
    with sqlite3.connect(first.state / "queue.db") as db:
        db.execute("UPDATE requests SET attempts = 25")
        db.execute("UPDATE batches SET attempts = 25")
    time.sleep(3)
    second = DaemonProc(config)
    try:
        second.wait_ready()
        done = second.wait_for(
            lambda: (r := request(second, rid))["state"] not in ("batched", "retuning") and r,
            what="the published batch to finish",
        )
        assert (done["state"], done["version"]) == ("published", 2), done
        assert raw_ids_left(second.state, [b"s0010", b"s0011"]) == []
        assert "resuming a batch whose last attempt ended the daemon" in second.log_text()
    finally:
        assert second.stop() == 0
    out = run_patiently([str(BIN / "eraserd"), "verify", "--config", str(config), "--json"])
    assert json.loads(out.stdout)["identical"]

    # The deletion certificate, and the audit log that holds it.
    entry = json.loads((second.state / "audit.jsonl").read_text().splitlines()[0])
    cert = entry["certificate"]
    current = (second.state / "registry/CURRENT").read_text().split()
    assert (cert["request"], cert["version"], cert["parent_version"]) == (rid, 2, 1)
    assert cert["manifest"] == current[1] and cert["parent_manifest"]
    blobs = second.state / "registry/blobs"
    assert cert["purged_blobs"]
    assert not [b for b in cert["purged_blobs"] if (blobs / b[:2] / f"{b}.bin").exists()]
    with Eraser(config_from_dict(yaml.safe_load(config.read_text()))) as er:
        named = [er.store.tombstone("sample", s) for s in ("s0010", "s0011")]
    assert cert["samples"] == sorted(named)
    assert audit_verify(config) == (0, [])
    # Tampering with the entry (hiding a sample) is caught and named.
    cert["samples"] = cert["samples"][:1]
    (second.state / "audit.jsonl").write_text(json.dumps(entry) + "\n")
    code, problems = audit_verify(config)
    assert code == 1 and problems == [
        f"entry 1 (seq 1, request {rid}): its content does not match its hash (edited)"
    ]


def audit_verify(config: Path) -> tuple[int, list[str]]:
    proc = subprocess.run(
        [str(BIN / "eraserd"), "audit", "verify", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc.returncode, json.loads(proc.stdout)["problems"]


@pytest.mark.slow
def test_a_full_disk_and_a_worker_that_dies_starting_are_retried(config, tmp_path):
    """Defects: a failure that could not be recorded left the batch stuck until a new
    submission; a worker killed while starting failed the request for good. A batch that
    keeps failing also withdraws the clusters holding its samples until it publishes."""
    raw = yaml.safe_load(config.read_text())
    raw["daemon"]["withdraw_after_attempts"] = 2
    config.write_text(yaml.safe_dump(raw))
    disk_full, worker_dies = tmp_path / "disk-full", tmp_path / "worker-dies"
    disk_full.touch()
    worker_dies.touch()
    d = DaemonProc(
        config,
        ERASERD_FAULT="retuning,record",  # the retune and the record of its failure
        ERASERD_FAULT_WHILE=str(disk_full),
        ERASERD_CRASHPOINT="worker-start",
        ERASERD_CRASHPOINT_WHILE=str(worker_dies),
    )
    try:
        d.wait_ready()
        rid = submit(d, {"sample_ids": ["s0020"], "subject_ids": ["subj040"]})
        flush(d)
        # Retried with no submission, flush or restart, although no failure could be recorded.
        stuck = d.wait_for(
            lambda: (r := request(d, rid))["attempts"] >= 3 and r, what="retries on a full disk"
        )
        assert stuck["state"] in ("batched", "retuning") and stuck["reason"] is None, stuck
        assert metrics(d)[("eraserd_clusters_withdrawn",)] >= 1  # failing closed meanwhile
        disk_full.unlink()  # space returns; the worker still dies as it starts
        dead = d.wait_for(
            lambda: "failed to start" in ((r := request(d, rid))["reason"] or "") and r,
            what="an attempt that meets the dead worker",
        )
        assert dead["state"] == "batched", dead
        worker_dies.unlink()
        done = d.wait_for(
            lambda: (r := request(d, rid))["state"] != "batched" and r["state"] != "retuning" and r,
            what="publication",
        )
        assert (done["state"], done["version"]) == ("published", 2), done
        assert done["attempts"] >= 4  # >= 2 on the full disk, >= 1 on the dead worker, 1 more
        m = metrics(d)
        assert m[("eraserd_batches_total", ("outcome", "retried"))] >= 3
        assert m[("eraserd_batches_total", ("outcome", "failed"))] == 0
        assert m[("eraserd_deletion_requests_failed_total", ("cause", "deadline"))] == 0
        assert m[("eraserd_clusters_withdrawn",)] == 0  # published: back in service
        log = d.log_text()
        assert "could not record the failed attempt" in log
        assert "error=ExecutorError" in log and "error=OSError" in log
    finally:
        assert d.stop() == 0
    assert raw_ids_left(d.state, [b"s0020", b"subj040"]) == []


@pytest.mark.slow
def test_a_purge_on_a_full_disk_is_finished_before_any_newer_batch(config, tmp_path):
    """Defect: a purge that failed after the swap let the next batch publish on top, leaving
    the old version and its blobs, trained on the deleted sample, on disk."""
    disk_full = tmp_path / "disk-full"
    disk_full.touch()
    d = DaemonProc(config, ERASERD_FAULT="purging", ERASERD_FAULT_WHILE=str(disk_full))
    try:
        d.wait_ready()
        first = submit(d, {"sample_ids": ["s0040"]})
        flush(d)
        d.wait_for(
            lambda: "No space left" in (request(d, first)["reason"] or ""),
            what="the purge to hit the full disk",
        )
        assert (d.state / "registry/versions/000002.json").exists()  # swapped, not purged
        second = submit(d, {"sample_ids": ["s0041"]})
        flush(d)
        d.wait_for(lambda: request(d, first)["attempts"] >= 3, what="more purge attempts")
        assert request(d, second)["state"] == "queued"
        retries = d.call("GET", "/v1/status")[1]["retries"]
        assert [r["batch"] for r in retries] == [request(d, first)["batch_id"]], retries
        assert retries[0]["error"].startswith("OSError: [Errno 28] No space left"), retries
        shown = ctl("status", "--config", config).stdout
        assert f"batch {retries[0]['batch']}: retrying after " in shown, shown
        assert not (d.state / "registry/versions/000003.json").exists()
        disk_full.unlink()
        for rid, version in ((first, 2), (second, 3)):
            done = d.wait_for(
                lambda rid=rid: (r := request(d, rid))["state"] == "published" and r,
                what=f"request {rid}",
            )
            assert done["version"] == version, done
        assert sorted(p.name for p in (d.state / "registry/versions").iterdir()) == ["000003.json"]
        # Each published request has its certificate, chained in publication order.
        one = d.call("GET", f"/v1/deletions/{first}/certificate")[1]
        two = d.call("GET", f"/v1/deletions/{second}/certificate")[1]
        assert (one["seq"], two["seq"], two["prev"]) == (1, 2, one["hash"])
        assert (one["certificate"]["version"], two["certificate"]["version"]) == (2, 3)
        shown = ctl("certificate", first, "--config", config).stdout
        assert shown.startswith(f"request {first}: deleted; certificate 1 of the audit log")
        code, r = d.call("GET", "/v1/deletions/del_nonexistent/certificate")
        assert code == 404 and "no deletion request" in r["error"]["message"]
    finally:
        assert d.stop() == 0
    assert raw_ids_left(d.state, [b"s0040", b"s0041"]) == []


@pytest.mark.slow
def test_a_deadline_that_passes_unpublished_fails_closed_with_an_alert(config):
    """A batch that ends the daemon on every attempt is retried across restarts until the
    deadline; then it fails closed, without another attempt, and the metrics say so."""
    first = DaemonProc(config, crashpoint="retuning")
    first.wait_ready()
    doomed = submit(first, {"sample_ids": ["s0050"], "deadline": deadline_in(4)})
    flush(first)
    assert first.wait_exit() == -9
    first.log.close()
    time.sleep(4)
    second = DaemonProc(config, crashpoint="retuning")  # would die again if it attempted
    try:
        second.wait_ready()
        failed = second.wait_for(
            lambda: (r := request(second, doomed))["state"] == "failed" and r,
            what="the request to fail closed",
        )
        assert failed["reason"].startswith("deadline passed before the deletion was published")
        assert failed["version"] is None and failed["published_at"] is None
        assert second.call("GET", "/v1/status")[1]["version"] == 1
        m = metrics(second)
        assert m[("eraserd_deletion_requests_failed_total", ("cause", "deadline"))] == 1
        assert m[("eraserd_deadline_misses_total",)] == 1
        assert m[("eraserd_batches_total", ("outcome", "failed"))] == 1
        assert m[("eraserd_batches_total", ("outcome", "published"))] == 0
        assert "requests failed closed" in second.log_text()
    finally:
        assert second.stop() == 0
    # Failed closed: its raw ids are erased from the queue like a published request's.
    assert b"s0050" not in (second.state / "queue.db").read_bytes()


def predict(d: DaemonProc, image: Path) -> dict:
    code, p = d.call(
        "POST", "/v1/predict", data=image.read_bytes(), headers={"Content-Type": "image/png"}
    )
    assert code == 200, p
    return p


@pytest.mark.slow
def test_a_cluster_whose_deletion_missed_its_deadline_is_withdrawn(config, tmp_path, digits_data):
    """Fail closed: the cluster holding a sample whose deletion missed its deadline stops
    answering (the nearest served cluster answers instead) until the deletion is done."""
    with Eraser(config_from_dict(yaml.safe_load(config.read_text()))) as er:
        row = next(r for r in er.samples() if r["split"] == "train")
    victim, image = row["sample_id"], digits_data / f"img/{row['sample_id'][1:]}.png"
    disk_full = tmp_path / "disk-full"
    disk_full.touch()
    d = DaemonProc(config, ERASERD_FAULT="retuning", ERASERD_FAULT_WHILE=str(disk_full))
    try:
        d.wait_ready()
        before = predict(d, image)
        assert (before["cluster"], before["fallback"]) == (row["cluster"], False)
        rid = submit(d, {"sample_ids": [victim], "deadline": deadline_in(4)})
        flush(d)
        d.wait_for(lambda: request(d, rid)["state"] == "failed", what="the deadline to pass")
        after = predict(d, image)
        assert after["cluster"] != row["cluster"] and after["fallback"] is True, after
        assert after["version"] == 1
        m = metrics(d)
        assert m[("eraserd_clusters_withdrawn",)] == 1
        assert m[("eraserd_deletion_requests_failed_total", ("cause", "deadline"))] == 1
        assert json.loads((d.state / "withheld.json").read_text()).keys()  # keyed, no ids
        assert victim.encode() not in (d.state / "withheld.json").read_bytes()

        disk_full.unlink()  # the cause is fixed; the deletion is submitted again
        again = submit(d, {"sample_ids": [victim]})
        flush(d)
        done = d.wait_for(
            lambda: (r := request(d, again))["state"] == "published" and r, what="the retry"
        )
        assert done["version"] == 2
        assert metrics(d)[("eraserd_clusters_withdrawn",)] == 0
        assert predict(d, image)["fallback"] is False
        assert json.loads((d.state / "withheld.json").read_text()) == {}
    finally:
        assert d.stop() == 0
