"""``GET /metrics`` of a real daemon that has published a batch, checked by value, by
``promtool`` and against the reference table in docs/metrics.md; the alert rules' own tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from daemon_util import BIN, DaemonProc, built_state, start_published_daemon
from prometheus_client.parser import text_string_to_metric_families

from eraserd import __version__, poisson, window_plan
from eraserd.manifest import FORMAT, Manifest
from eraserd.metrics import estimate_rate, forecast, retune_cost
from eraserd.queue import Queue, QueueView
from eraserd.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (.ci/run installs Debian's prometheus)"
)


def scrape(d: DaemonProc) -> tuple[str, str]:
    with urllib.request.urlopen(d.url + "/metrics", timeout=10) as r:  # no token
        return r.read().decode(), r.headers["Content-Type"]


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(found: dict, name: str, **labels) -> float:
    return found[(name, frozenset(labels.items()))]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, digits_data, lite0_32):
    d = start_published_daemon(
        tmp_path_factory.mktemp("metrics"),
        digits_data / "manifest.csv",
        lite0_32,
        built_state(tmp_path_factory),
    )
    yield d
    d.stop()


@pytest.mark.slow
def test_metrics_after_a_published_batch(daemon):
    text, ctype = scrape(daemon)
    assert ctype.startswith("text/plain; version=")
    m = samples(text)
    assert value(m, "eraserd_batches_total", outcome="published") == 1
    assert value(m, "eraserd_batches_total", outcome="failed") == 0
    assert value(m, "eraserd_batches_total", outcome="retried") == 0
    assert value(m, "eraserd_deletion_requests_failed_total", cause="deadline") == 0
    assert value(m, "eraserd_deletion_requests_total") == 1
    assert value(m, "eraserd_deletion_samples_total") == 4  # s0004 and subj020's three
    assert value(m, "eraserd_deletion_latency_seconds_count") == 1
    assert 0 < value(m, "eraserd_deletion_latency_seconds_sum") < 60
    assert value(m, "eraserd_deadline_misses_total") == 0
    assert value(m, "eraserd_queue_pending_requests") == 0
    assert value(m, "eraserd_queue_oldest_pending_age_seconds") == 0
    assert value(m, "eraserd_registry_version") == value(m, "eraserd_registry_current_version") == 2
    assert value(m, "eraserd_registry_swaps_total") == 1
    assert value(m, "eraserd_workers_up", device="cpu") == 1
    assert value(m, "eraserd_build_info", version=__version__, backbone="efficientnet_lite0") == 1
    assert value(m, "eraserd_batch_window_seconds") == 1.0

    manifest = Registry(daemon.state).load()
    change = manifest.change
    sizes = [c.size for c in manifest.clusters]
    assert value(m, "eraserd_clusters") == len(sizes)
    assert value(m, "eraserd_private_samples", split="train") == sum(sizes)
    assert value(m, "eraserd_private_samples", split="test") == manifest.samples["test"]
    assert value(m, "eraserd_batch_affected_clusters_count") == 1
    assert value(m, "eraserd_batch_affected_clusters_sum") == len(change.affected) >= 1
    assert value(m, "eraserd_reclusters_total") == int(change.reclustered)
    jobs = change.jobs
    assert value(m, "eraserd_retune_cluster_seconds_count") == len(jobs) == len(change.retrained)
    assert value(m, "eraserd_retune_cluster_seconds_sum") == pytest.approx(
        sum(j.seconds for j in jobs.values())
    )

    # The Poisson gauges are poisson.py's formulas at the exposed rate, window and sizes.
    rate = value(m, "eraserd_poisson_rate_samples_per_second")
    assert 0 < rate <= 4.0  # 4 samples over at least one window of 1 s
    approx = pytest.approx
    assert value(m, "eraserd_poisson_expected_affected_clusters") == approx(
        poisson.expected_affected(sizes, rate, 1.0)
    )
    assert value(m, "eraserd_poisson_affected_clusters_variance") == approx(
        poisson.variance_affected(sizes, rate, 1.0)
    )
    assert value(m, "eraserd_poisson_any_affected_probability") == approx(poisson.p_any(rate, 1.0))
    t_c = value(m, "eraserd_retune_cluster_mean_seconds")
    throughput = value(m, "eraserd_retune_throughput_image_steps_per_second")
    assert t_c > 0 and throughput > 0
    assert value(m, "eraserd_expected_retrain_share") == manifest.cost["expected_retrain_share"]
    assert value(m, "eraserd_largest_cluster_share") == manifest.cost["largest_share"]

    # Size-aware costs: the same numbers `eraserd plan` prints for this rate and window.
    plan = json.loads(
        subprocess.run(
            [str(BIN / "eraserd"), "plan", "-c", str(daemon.config), "--json"]
            + ["--rate", repr(rate), "--deadline", "1h", "--devices", "1"],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout
    )
    row = next(r for r in plan["rows"] if r["window_s"] == 1.0)
    assert value(m, "eraserd_retune_single_prompt_seconds") == approx(plan["single_prompt_s"])
    assert value(m, "eraserd_poisson_expected_batch_single_device_seconds") == approx(
        row["batch_s"]
    )
    assert value(m, "eraserd_poisson_expected_batch_seconds") == approx(row["batch_s"])  # 1 up
    gain = row["single_prompt_device_s_per_day"] / row["device_s_per_day"]
    assert value(m, "eraserd_efficiency_gain_ratio") == approx(gain)

    # No ids in names or labels.
    assert not re.search(r"\bs0\d{3}\b|subj\d{3}|del_[0-9a-f]", text)
    assert all(c.key not in text for c in manifest.clusters)


@pytest.mark.slow
@needs_promtool
def test_promtool_finds_no_problems_in_the_exposition(daemon):
    text, _ = scrape(daemon)
    out = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr


def reference_table() -> dict[str, str]:
    """Name -> type from the reference table in docs/metrics.md."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    section = text.split("## Reference", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_:]+)` \| (\w+) \| .+ \|$", section, re.M)
    assert rows, "no reference table found in docs/metrics.md"
    table = dict(rows)
    assert len(table) == len(rows), "a metric is listed twice"
    return table


@pytest.mark.slow
def test_docs_reference_lists_exactly_the_exposed_families(daemon):
    text, _ = scrape(daemon)
    exposed = {}
    for fam in text_string_to_metric_families(text):
        exposed[fam.name + ("_total" if fam.type == "counter" else "")] = fam.type
    assert reference_table() == exposed


@needs_promtool
def test_prometheus_config_and_alert_rules():
    for args in (
        ["check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
        ["check", "rules", str(RULES / "eraserd.rules.yml")],
        ["test", "rules", str(RULES / "eraserd.rules.test.yml")],
    ):
        out = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"promtool {' '.join(args)}:\n{out.stdout}{out.stderr}"
    tested = set(re.findall(r"alertname: (\w+)", (RULES / "eraserd.rules.test.yml").read_text()))
    rules = yaml.safe_load((RULES / "eraserd.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == tested, "every alert needs a promtool unit test"


@pytest.mark.slow
def test_a_restart_keeps_the_rate_estimate_and_the_retune_cost(daemon):
    before = samples(scrape(daemon)[0])
    assert daemon.stop() == 0
    again = DaemonProc(daemon.config)
    try:
        again.wait_ready()
        after = samples(scrape(again)[0])
    finally:
        again.stop()
    # Counters start over; the estimates come from queue.db and the manifest.
    assert value(after, "eraserd_batches_total", outcome="published") == 0
    assert value(after, "eraserd_poisson_rate_samples_per_second") > 0
    assert value(after, "eraserd_registry_version") == 2
    # Seeded with the serving version's jobs only, so T_c is that batch's mean.
    manifest = Registry(again.state).load()
    jobs = [j.seconds for j in manifest.change.jobs.values()]
    assert value(after, "eraserd_retune_cluster_mean_seconds") == pytest.approx(
        sum(jobs) / len(jobs)
    )
    assert value(before, "eraserd_clusters") == value(after, "eraserd_clusters")


# ---- the pure helpers and the read-only queue view ------------------------------------------


def test_rate_estimate_divides_by_the_history_it_has():
    assert estimate_rate(36, observed_s=7200, horizon_s=3600, window_s=60) == 0.01
    assert estimate_rate(36, observed_s=360, horizon_s=3600, window_s=60) == 0.1
    # One request right after start is not read as a burst: at least one window.
    assert estimate_rate(3, observed_s=0.5, horizon_s=3600, window_s=60) == 0.05
    assert estimate_rate(0, observed_s=0, horizon_s=3600, window_s=60) == 0


def manifest_like(sizes, samples, jobs, recluster_share, min_steps=0) -> Manifest:
    jobs = {f"c{i}": {"seconds": s, "device": "cpu", "attempts": 1} for i, s in jobs.items()}
    blobs = {"members": "", "prompt": "", "head": ""}
    return Manifest.from_dict(
        {
            "format": FORMAT,
            "version": 3,
            "created_at": "2026-11-30T00:00:00+00:00",
            "config_hash": "h",
            "backbone": {},
            "classes": [],
            "train_fingerprint": "t",
            "cluster_fingerprint": "c",
            "prototypes": "p",
            "samples": {"train": sum(sizes), "test": 0},
            "clusters": [
                {"key": f"c{i}", "size": m, "sample_count": k, **blobs}
                for i, (m, k) in enumerate(zip(sizes, samples))
            ],
            "change": {"jobs": jobs, "seconds": 9.0},
            "config": {"training": {"epochs": 2, "batch_size": 32, "min_steps": min_steps}},
            "cost": {"recluster_share": recluster_share},
        }
    )


def test_forecast_agrees_with_the_plan_on_the_same_inputs():
    sizes, samples = (700, 200, 60, 40), (70, 20, 6, 4)
    inputs = window_plan.plan_inputs(manifest_like(sizes, samples, {0: 140.0, 3: 9.0}, 0.3))
    rate, window = 0.004, 600.0
    for devices in (1, 3):
        f = forecast(inputs, rate, window, devices)
        p = window_plan.plan(
            inputs.sizes,
            inputs.times.seconds,
            rate,
            86400.0,
            devices,
            inputs.sample_counts,
            windows=[window],
            recluster_share=inputs.recluster_share,
            single_prompt_s=inputs.single_prompt_s,
        )
        (row,) = p.rows
        assert f.batch_parallel_s == pytest.approx(row.batch_s)
        assert f.gain == pytest.approx(row.single_prompt_device_s_per_day / row.device_s_per_day)
        assert f.expected_k == pytest.approx(poisson.expected_affected(sizes, rate, window))
        assert f.p_any == pytest.approx(poisson.p_any(rate, window))
    # Equal epochs everywhere: one prompt on all data costs what every cluster costs.
    assert f.single_prompt_s == pytest.approx(sum(inputs.times.seconds))
    # Size-aware: the big cluster is hit most and costs most, so the gain is far below the
    # cluster count that an unweighted T_s / T_c would suggest.
    t_c = sum(inputs.times.seconds) / len(sizes)
    assert f.gain < 0.6 * (f.single_prompt_s / t_c)
    # At a zero rate the gain is the limit of small rates.
    still = forecast(inputs, 0.0, window, 1)
    assert still.batch_single_s == 0 and still.expected_k == 0
    assert still.gain == pytest.approx(forecast(inputs, 1e-9, window, 1).gain, rel=1e-6)
    # Reclusters cost something: without them the gain is higher.
    free = window_plan.plan_inputs(manifest_like(sizes, samples, {0: 140.0, 3: 9.0}, 0.0))
    assert forecast(free, rate, window, 1).gain > f.gain
    # With min_steps, small clusters train more epochs than one prompt on all data would:
    # T_s is one prompt at its own epochs, not the sum of the clusters' times.
    slow = window_plan.plan_inputs(manifest_like(sizes, samples, {0: 140.0}, 0.3, min_steps=20))
    assert slow.single_prompt_s == pytest.approx(1000 * 2 * 140.0 / (700 * 2))
    assert slow.single_prompt_s < 0.8 * sum(slow.times.seconds)
    assert forecast(slow, rate, window, 1).single_prompt_s == slow.single_prompt_s


def test_retune_cost_observes_recent_jobs():
    cost = retune_cost([(10.0, 100.0), (30.0, 300.0)])
    assert cost.cluster_s == 20.0 and cost.throughput == 10.0
    assert retune_cost([]) == type(cost)(None, None)


def test_queue_view_reads_counts_and_times_from_the_database(tmp_path):
    q = Queue(tmp_path / "queue.db", b"k" * 32)
    view = QueueView(tmp_path / "queue.db")
    try:
        args = {"forgotten": [], "default_deadline_s": 0.0}
        q.admit(["a", "b"], [], matched=["a", "b"], deadline=500.0, now=100.0, **args)
        q.admit(["c"], [], matched=["c"], deadline=5000.0, now=4000.0, **args)
        f = view.facts(now=4100.0, horizon_s=3600.0)
        assert (f.pending_requests, f.pending_samples, f.oldest_pending) == (2, 3, 100.0)
        assert f.overdue == 1 and f.recent_samples == 1 and f.first_submitted == 100.0
        assert f.last_published is None
        bid = q.open_batch("manual", 4200.0)
        q.mark_retuning(bid, 4200.0)
        q.mark_published(bid, 2, 1, 1, 3.0, 4300.0)
        f = view.facts(now=4400.0, horizon_s=3600.0)
        assert f.pending_requests == 0 and f.overdue == 0 and f.last_published == 4300.0
        assert sorted(view.published_times(bid)) == [
            (100.0, 500.0, 4300.0),
            (4000.0, 5000.0, 4300.0),
        ]
    finally:
        view.close()
        q.close()
