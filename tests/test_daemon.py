"""Acceptance for ``eraserd run``: end to end, crash recovery, bad input. Real daemon
processes on loopback, real SIGKILL, real SQLite."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from conftest import tree_bytes
from daemon_util import BIN, DaemonProc, built_state, ctl, prebuilt_config, write_daemon_config
from patience import children, run_patiently


def verify(config) -> dict:
    out = run_patiently([str(BIN / "eraserd"), "verify", "--config", str(config), "--json"])
    return json.loads(out.stdout)


def published(daemon: DaemonProc, rid: str, state: str = "published"):
    """The request if it has reached ``state``, else None (for ``wait_for``)."""
    code, r = daemon.call("GET", f"/v1/deletions/{rid}")
    assert code == 200
    return r if r["state"] == state else None


@pytest.mark.slow
def test_end_to_end_with_eraserctl(tmp_path, digits_data):
    config = write_daemon_config(tmp_path, digits_data / "manifest.csv", window=2.0)
    launched = time.time()
    d = DaemonProc(config)
    try:
        d.wait_ready()
        status = json.loads(ctl("status", "--config", config, "--json").stdout)
        assert status["version"] == 1
        # Uptime counts from serving, not from launch: it leaves out the first build, whose
        # time is the predicted batch time until a batch has been measured.
        assert 0 <= status["uptime_s"] <= time.time() - launched - status["predicted_batch_s"]
        submit = [
            "submit-deletion",
            "--config",
            config,
            "--sample-id",
            "s0004",
            "--subject-id",
            "subj020",
            "--idempotency-key",
            "ticket-1",
            "--json",
        ]
        out = ctl(*submit, "--wait", "--timeout", "120")
        r = json.loads(out.stdout)
        assert r["state"] == "published" and r["version"] == 2 and r["samples"] == 4
        # Published within one window plus the retune itself.
        assert r["published_at"] - r["created_at"] < 2.0 + 30
        again = json.loads(ctl(*submit).stdout)
        assert again["id"] == r["id"] and again["version"] == 2
        text = ctl("status", "--config", config).stdout
        assert text.startswith("version 2 ")
        assert "published" in ctl("status", r["id"], "--config", config).stdout
        preds = json.loads(
            ctl("predict", "--config", config, digits_data / "img/0100.png", "--json").stdout
        )
        assert preds[0]["version"] == 2
        # Already forgotten ids are reported, not refused.
        dup = json.loads(
            ctl(
                "submit-deletion",
                "--config",
                config,
                "--sample-id",
                "s0004",
                "--sample-id",
                "s0007",
                "--json",
            ).stdout
        )
        assert dup["already_forgotten_ids"] == ["sample s0004"] and dup["samples"] == 1
        d.wait_for(lambda: published(d, dup["id"]), what="second request")
    finally:
        assert d.stop() == 0
    assert "daemon stopped" in d.log_text()
    assert verify(config)["identical"]
    audit = run_patiently([str(BIN / "eraserd"), "audit", "verify", "--config", str(config)])
    assert audit.stdout.startswith("audit log: 2 certificate(s), ") and "OK" in audit.stdout
    for needle in (b"s0004", b"subj020", b"s0007"):
        for path, data in tree_bytes(d.state):
            assert needle not in data, f"{needle!r} left in {path}"
        assert needle not in d.log_text().encode(), "raw ids must not be logged"


@pytest.mark.slow
# "acked" (killed between an acknowledgement and its batch) is what most of the chaos test's
# kills hit; "swapped" is killed again and again in test_retries.
@pytest.mark.parametrize("point", ["retuning", "written"])
def test_crash_recovery_publishes_each_request_once(prebuilt, point):
    # A long window: the batch starts only on the explicit flush, so all three requests
    # share one batch and the crash hits it at a known point.
    config = prebuilt(window=3600.0)
    first = DaemonProc(config, crashpoint=None if point == "acked" else point)
    first.wait_ready()
    ids = []
    bodies = [
        {"sample_ids": ["s0010", "s0011"]},
        {"subject_ids": ["subj030"], "idempotency_key": "k"},
        {"sample_ids": ["s0100"]},
    ]
    for body in bodies:
        code, r = first.call("POST", "/v1/deletions", body)
        assert code == 202, r
        ids.append(r["id"])
    if point == "acked":
        workers = children(first.proc.pid)
        assert workers, "the daemon should run a worker process"
        first.kill()  # SIGKILL right after the acknowledgements
        # Workers die with their parent instead of lingering as orphans.
        end = time.monotonic() + 10
        while time.monotonic() < end and any(Path(f"/proc/{p}").exists() for p in workers):
            time.sleep(0.1)
        assert not any(Path(f"/proc/{p}").exists() for p in workers)
    else:
        assert first.call("POST", "/v1/flush")[0] == 202
        assert first.wait_exit() == -9, "the crash point should SIGKILL the daemon"
    first.log.close()
    second = DaemonProc(config)
    try:
        second.wait_ready()
        assert second.call("POST", "/v1/flush")[0] == 202
        done = [second.wait_for(lambda rid=rid: published(second, rid), what=rid) for rid in ids]
        versions = {r["version"] for r in done}
        assert len({r["batch_id"] for r in done}) == 1 and versions == {2}, done
        code, again = second.call(
            "POST", "/v1/deletions", {"subject_ids": ["subj030"], "idempotency_key": "k"}
        )
        assert code == 200 and again["id"] == ids[1]
        status = second.call("GET", "/v1/status")[1]
        assert status["version"] == 2 and status["last_batch"]["state"] == "published"
    finally:
        assert second.stop() == 0
    assert sorted(p.name for p in (second.state / "registry" / "versions").iterdir()) == [
        "000002.json"
    ]
    assert verify(config)["identical"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, digits_data, lite0_32):
    root = tmp_path_factory.mktemp("api")
    config = prebuilt_config(
        root,
        digits_data / "manifest.csv",
        lite0_32,
        built_state(tmp_path_factory),
        window=3600.0,
        max_body_bytes=4096,
    )
    d = DaemonProc(config)
    d.wait_ready()
    yield d
    d.stop()


def queued(d: DaemonProc) -> dict:
    return d.call("GET", "/v1/status")[1]["queue"]["requests"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, expected_code, message",
    [
        ("malformed", 400, "malformed JSON body"),
        ("empty", 422, "name at least one sample_id or subject_id"),
        ("unknown", 422, "unknown id(s): sample nobody, subject ghost; nothing was queued"),
        ("extra_field", 422, "sample: Extra inputs are not permitted"),
        ("wrong_type", 422, "sample_ids: Input should be a valid list"),
        ("oversized", 413, "request body exceeds 4096 bytes"),
        ("no_token", 401, "missing bearer token"),
        ("wrong_token", 401, "invalid bearer token"),
        ("past_deadline", 422, "deadline is in the past"),
    ],
)
def test_bad_deletion_requests_are_refused(daemon, case, expected_code, message):
    before = queued(daemon)
    body, data, token, headers = None, None, "default", {"Content-Type": "application/json"}
    if case == "malformed":
        data = b'{"sample_ids": ["s0001"'
    elif case == "empty":
        body = {}
    elif case == "unknown":
        body = {"sample_ids": ["s0001", "nobody"], "subject_ids": ["ghost"]}
    elif case == "extra_field":
        body = {"sample": ["s0001"]}
    elif case == "wrong_type":
        body = {"sample_ids": "s0001"}
    elif case == "oversized":
        body = {"sample_ids": ["s0001"] * 1000}
    elif case == "no_token":
        body, token = {"sample_ids": ["s0001"]}, None
    elif case == "wrong_token":
        body, token = {"sample_ids": ["s0001"]}, "not-the-token"
    elif case == "past_deadline":
        body = {"sample_ids": ["s0001"], "deadline": "2001-01-01T00:00:00Z"}
    code, r = daemon.call(
        "POST", "/v1/deletions", body=body, data=data, headers=headers, token=token
    )
    assert code == expected_code, r
    assert message in r["error"]["message"]
    if case == "unknown":
        assert r["error"]["unknown"] == ["sample nobody", "subject ghost"]
    assert queued(daemon) == before


@pytest.mark.slow
def test_bad_predict_and_lookup(daemon, digits_data):
    code, r = daemon.call(
        "POST",
        "/v1/predict",
        data=b"plain text, not an image",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert code == 415 and "not a readable image" in r["error"]["message"]
    code, r = daemon.call(
        "POST", "/v1/predict", data=b"", headers={"Content-Type": "application/octet-stream"}
    )
    assert code == 422
    code, r = daemon.call("GET", "/v1/deletions/del_nothing")
    assert code == 404 and "del_nothing" in r["error"]["message"]
    code, r = daemon.call(
        "POST",
        "/v1/predict",
        data=(digits_data / "img/0000.png").read_bytes(),
        headers={"Content-Type": "image/png"},
    )
    assert code == 200 and r["version"] == 1
    code, _ = daemon.call("GET", "/openapi.json", token=None)
    assert code == 200
    assert daemon.call("GET", "/healthz", token=None)[0] == 200


@pytest.mark.slow
def test_eraserctl_errors_are_one_clear_line(daemon, tmp_path):
    cfg = daemon.config
    bad = ctl("status", "--config", cfg, "--token", "wrong", check=False)
    assert bad.returncode == 9 and bad.stderr.startswith("eraserctl: unauthorized (401)")
    bad = ctl("status", "--url", "http://127.0.0.1:9", "--token", "x", check=False)
    assert bad.returncode == 8 and "cannot reach eraserd at http://127.0.0.1:9" in bad.stderr
    bad = ctl("status", "del_missing", "--config", cfg, check=False)
    assert bad.returncode == 4 and "not found (404)" in bad.stderr
    bad = ctl("submit-deletion", "--config", cfg, "--sample-id", "nobody", check=False)
    assert bad.returncode == 4 and "unknown id(s): sample nobody" in bad.stderr
    bad = ctl(
        "submit-deletion", "--config", cfg, "--sample-id", "s1", "--deadline", "soon", check=False
    )
    assert bad.returncode == 2 and "--deadline" in bad.stderr
    for out in (bad,):
        assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_wait_that_runs_out_says_so_and_exits_7(daemon):
    cfg = daemon.config
    out = ctl(
        "submit-deletion",
        "-c",
        cfg,
        "--sample-id",
        "s0100",
        "--wait",
        "--timeout",
        "1",
        check=False,
    )
    assert out.returncode == 7, out.stderr
    rid = out.stdout.split(":")[0]
    assert out.stderr.splitlines() == [
        f"eraserctl: gave up waiting after 1s: request {rid} is still queued (the daemon keeps "
        f"it; see eraserctl status {rid})"
    ]
    assert daemon.call("GET", f"/v1/deletions/{rid}")[1]["state"] == "queued"


@pytest.mark.slow
def test_sighup_is_logged_and_ignored(daemon):
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda: "SIGHUP ignored" in daemon.log_text(), what="the SIGHUP log line")
    assert daemon.proc.poll() is None
    assert daemon.call("GET", "/v1/status")[0] == 200


@pytest.mark.slow
def test_a_port_in_use_is_one_clear_error_before_anything_starts(prebuilt):
    config = prebuilt()
    port = yaml.safe_load(config.read_text())["daemon"]["port"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        proc = run_patiently([str(BIN / "eraserd"), "run", "--config", str(config)])
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"eraserd: error: cannot listen on 127.0.0.1:{port}: address already in use "
        "(another process has it: stop it or set daemon.port)"
    ]


@pytest.mark.slow
def test_second_instance_is_refused(daemon):
    proc = subprocess.run(
        [str(BIN / "eraserd"), "run", "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 6
    assert "is in use by eraserd run (pid" in proc.stderr


@pytest.mark.slow
def test_size_and_deadline_flush_without_waiting_for_the_window(prebuilt):
    config = prebuilt(window=3600.0, max_batch_samples=3, deadline_margin_s=30.0)
    d = DaemonProc(config)
    try:
        d.wait_ready()
        soon = (datetime.now(timezone.utc) + timedelta(seconds=20)).isoformat()
        code, r = d.call("POST", "/v1/deletions", {"sample_ids": ["s0012"], "deadline": soon})
        assert code == 202
        done = d.wait_for(lambda: published(d, r["id"]), what="deadline flush")
        assert d.call("GET", "/v1/status")[1]["last_batch"]["reason"] == "deadline"
        code, r = d.call("POST", "/v1/deletions", {"sample_ids": ["s0013", "s0014", "s0015"]})
        assert code == 202
        done = d.wait_for(lambda: published(d, r["id"]), what="size flush")
        assert done["version"] == 3
        assert d.call("GET", "/v1/status")[1]["last_batch"]["reason"] == "size"
    finally:
        assert d.stop() == 0


class VirtualDaemon:
    """A ``Daemon`` in this process on a virtual clock: no threads are started, and each
    ``tick`` is called by hand. ``flushed()`` is the flush it asked its batch runner for."""

    def __init__(self, config, now: float):
        from eraserd.config import load_config
        from eraserd.daemon import Daemon

        self.now = now
        self.daemon = Daemon(load_config(config), clock=lambda: self.now)

    def flushed(self) -> str | None:
        d = self.daemon
        reason, d._reason = d._reason, None
        d._wake.clear()
        return reason


@pytest.fixture
def virtual_daemon(prebuilt):
    made: list[VirtualDaemon] = []

    def make(now: float, **daemon) -> VirtualDaemon:
        made.append(VirtualDaemon(prebuilt(**daemon), now))
        return made[-1]

    yield make
    for v in made:
        v.daemon.stop()


def test_the_daemon_schedules_batches_on_an_injected_clock(virtual_daemon):
    v = virtual_daemon(1_000_000.0, window=60.0, max_batch_samples=3, deadline_margin_s=10.0)
    d = v.daemon
    assert d.status()["next_window_at"] == 1_000_060.0
    d.submit(["s0004"], [], None, None)
    v.now += 59.0
    d.tick()
    assert v.flushed() is None  # one sample, no deadline near, the window not over
    v.now += 1.0
    d.tick()
    assert v.flushed() == "window" and d.status()["next_window_at"] == 1_000_120.0
    d.submit(["s0005", "s0006"], [], None, None)
    assert v.flushed() == "size"  # 3 samples pending: at once, without a tick
    v.now += 1.0
    d.tick()
    assert v.flushed() == "size"  # still pending: every tick asks again
    assert d.flush()["queued_requests"] == 2 and v.flushed() == "manual"  # POST /v1/flush


def test_the_daemon_flushes_for_a_deadline_on_an_injected_clock(virtual_daemon):
    """Due when the deadline minus the predicted batch time is within the margin."""
    v = virtual_daemon(2_000_000.0, window=3600.0, max_batch_samples=100, deadline_margin_s=10.0)
    d = v.daemon
    d.submit(["s0004"], [], None, v.now + d.predicted_s + 10.0 + 5.0)
    d.tick()
    assert v.flushed() is None
    v.now += 5.0
    d.tick()
    assert v.flushed() == "deadline"


def test_duplicate_ids_count_once_in_queued_samples_flush_size_and_rate(virtual_daemon):
    v = virtual_daemon(3_000_000.0, window=3600.0, max_batch_samples=4)
    d = v.daemon
    for _ in range(20):
        d.submit(["s0004"], [], None, None)
    # subj001 is s0003, s0004 and s0005: it adds two samples, s0005 named again adds none.
    d.submit(["s0005"], ["subj001"], None, None)
    assert d.status()["queue"]["requests"]["queued"] == 21
    assert d.status()["queue"]["queued_samples"] == 3
    d.tick()
    assert v.flushed() is None  # 3 distinct samples, under the size of 4, though 23 named
    facts = d.queue_view.facts(v.now, d.cfg.daemon.rate_horizon_s)
    assert (facts.pending_samples, facts.recent_samples) == (3, 3)  # what λ̂ reads
    d.submit(["s0006"], [], None, None)
    assert v.flushed() == "size"


@pytest.mark.slow
@pytest.mark.parametrize(
    "data, ctype",
    [
        (b"[]", "application/json"),
        (b'{"sample_ids": [1, 2]}', "application/json"),
        (b'{"sample_ids": [""]}', "application/json"),
        (b'{"sample_ids": ["a\\u0000b"]}', "application/json"),
        (b'{"deadline": "tomorrow", "sample_ids": ["s0001"]}', "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"sample_ids=s0001", "application/x-www-form-urlencoded"),
        (b'{"sample_ids": ["s0001"]}', "text/plain"),
    ],
)
def test_garbage_never_gets_a_5xx(daemon, data, ctype):
    before = queued(daemon)
    code, r = daemon.call("POST", "/v1/deletions", data=data, headers={"Content-Type": ctype})
    assert 400 <= code < 500, (code, r)
    assert r["error"]["message"]
    assert queued(daemon) == before


@pytest.mark.slow
def test_a_failing_batch_keeps_the_old_version_serving(prebuilt, digits_data):
    config = prebuilt(window=0.5, retry_backoff_s=0.2, retry_backoff_max_s=1.0)
    d = DaemonProc(config)
    try:
        d.wait_ready()
        # Corrupt a blob of the serving version: every retune attempt must refuse to build on it.
        manifest = json.loads((d.state / "registry/versions/000001.json").read_text())
        head = manifest["clusters"][0]["head"]
        blob = d.state / "registry/blobs" / head[:2] / f"{head}.bin"
        blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
        deadline = datetime.now(timezone.utc) + timedelta(seconds=5)
        code, r = d.call(
            "POST", "/v1/deletions", {"sample_ids": ["s0020"], "deadline": deadline.isoformat()}
        )
        assert code == 202
        # Retried until the deadline, then failed closed, naming the last error.
        failed = d.wait_for(
            lambda: published(d, r["id"], "failed"),
            what="request to fail",
        )
        assert failed["attempts"] >= 2
        assert failed["reason"].startswith("deadline passed before the deletion was published")
        assert "CorruptBlobError" in failed["reason"]
        status = d.call("GET", "/v1/status")[1]
        assert status["version"] == 1 and status["last_batch"]["state"] == "failed"
        code, p = d.call(
            "POST",
            "/v1/predict",
            data=(digits_data / "img/0000.png").read_bytes(),
            headers={"Content-Type": "image/png"},
        )
        assert code == 200 and p["version"] == 1
    finally:
        assert d.stop() == 0
