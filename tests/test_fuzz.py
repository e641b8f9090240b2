"""Schemathesis against a real daemon: generated requests (valid and invalid) for every
operation of the OpenAPI schema the daemon serves, checked for server errors and for status
codes the schema does not document. The daemon's state holds a first version, so predictions
run the real model."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from daemon_util import BIN, DaemonProc
from patience import run_patiently

MIN_REQUESTS = 1000


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_undocumented_status(
    tmp_path, prebuilt, record_property
):
    d = DaemonProc(prebuilt(window=3600.0))
    d.wait_ready()
    har = tmp_path / "requests.har"
    try:
        run = run_patiently(
            [
                str(BIN / "schemathesis"),
                "run",
                d.url + "/openapi.json",
                "--header",
                f"Authorization: Bearer {d.token}",
                "--checks",
                "not_a_server_error,status_code_conformance",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "250",
                "--seed",
                "1",
                "--workers",
                "1",
                "--request-timeout",
                "120",
                "--report",
                "har",
                "--report-har-path",
                str(har),
            ],
            cwd=tmp_path,
        )
    finally:
        assert d.stop() == 0
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = Counter(e["response"]["status"] for e in entries)
    operations = Counter(
        (e["request"]["method"], e["request"]["url"].split("?")[0].replace(d.url, ""))
        for e in entries
    )
    summary = f"schemathesis: {len(entries)} requests, statuses {dict(sorted(statuses.items()))}"
    record_property("summary", summary)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert len(entries) >= MIN_REQUESTS, operations
    assert not {s: n for s, n in statuses.items() if s >= 500}
    assert ("POST", "/v1/predict") in operations and ("POST", "/v1/deletions") in operations
