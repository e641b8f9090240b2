"""A real Prometheus server scrapes a real daemon that has published a batch: every Grafana
panel query and every alert expression evaluates without error, and the panels have data."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from daemon_util import built_state, free_port, start_published_daemon

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules" / "eraserd.rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "eraserd.json"
PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="prometheus not installed (.ci/run installs Debian's prometheus)",
    ),
]

# Grafana's variables, as the dashboard uses them.
GRAFANA_VARS = {"$__rate_interval": "1m", "$instance": ".*"}


class PrometheusProc:
    def __init__(self, root: Path, target: str):
        self.url = f"http://127.0.0.1:{free_port()}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "eraserd", "static_configs": [{"targets": [target]}]}],
        }
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = root / "prometheus.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str, **params) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 503:  # starting up (e.g. replaying its WAL): not ready, not an answer
                raise ConnectionError(f"prometheus is not ready: {path}") from exc
            return json.loads(exc.read())  # 400/422 carry the PromQL error as JSON

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=10) as r:
                return r.status == 200
        except urllib.error.HTTPError:  # 503 until the TSDB is open
            return False

    def query(self, expr: str) -> dict:
        return self.get("/api/v1/query", query=expr)

    def wait_for(self, predicate, what: str, timeout: float = 60.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log_path.read_text()[-3000:]}")
            try:
                value = predicate()
            except (urllib.error.URLError, ConnectionError):
                value = None
            if value:
                return value
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def prom(tmp_path_factory, digits_data, lite0_32):
    root = tmp_path_factory.mktemp("prometheus")
    daemon = start_published_daemon(
        root,
        digits_data / "manifest.csv",
        lite0_32,
        built_state(tmp_path_factory),
    )
    p = PrometheusProc(root, daemon.url.removeprefix("http://"))
    try:
        p.wait_for(p.ready, "prometheus to be ready")
        p.wait_for(
            lambda: any(
                t["health"] == "up" for t in p.get("/api/v1/targets")["data"]["activeTargets"]
            ),
            "the daemon target to be up",
        )
        # rate() over the panels' ranges needs a few scrapes; the rules a few evaluations.
        p.wait_for(
            lambda: (
                float(
                    (
                        p.query("count_over_time(eraserd_build_info[1m])")["data"]["result"]
                        or [{"value": [0, "0"]}]
                    )[0]["value"][1]
                )
                >= 4
            ),
            "four scrapes",
        )
        yield p
    finally:
        p.stop()
        daemon.stop()


def panel_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, val in GRAFANA_VARS.items():
                expr = expr.replace(var, val)
            assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
            out.append((f"{panel['title']} / {target['refId']}", expr))
    assert len(out) > 10
    return out


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_dashboard_shape():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "eraserd-overview"
    titles = " | ".join(p["title"] for p in dash["panels"])
    for needed in ("queue", "rate", "E[K]", "latency", "throughput", "versions", "gain"):
        assert needed.lower() in titles.lower(), needed
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "eraserd-prometheus"


def test_every_panel_query_returns_data(prom):
    problems = []
    for where, expr in panel_queries():
        out = prom.query(expr)
        if out.get("status") != "success":
            problems.append(f"{where}: {out.get('error')} in {expr}")
        elif not out["data"]["result"]:
            problems.append(f"{where}: no data for {expr}")
    assert not problems, "\n".join(problems)


def test_every_alert_expression_evaluates_and_none_fires(prom):
    for rule in alert_rules():
        out = prom.query(rule["expr"])
        assert out.get("status") == "success", f"{rule['alert']}: {out.get('error')}"

    def evaluated():
        rules = [r for g in prom.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    loaded = prom.wait_for(evaluated, "every rule to be evaluated")
    assert {r["name"] for r in loaded} == {r["alert"] for r in alert_rules()}
    assert all(r["health"] == "ok" for r in loaded), [
        (r["name"], r.get("lastError")) for r in loaded
    ]
    # A healthy daemon that has just published raises no alert, pending or firing.
    assert prom.query("ALERTS")["data"]["result"] == []
