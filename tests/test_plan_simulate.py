"""``eraserd plan`` and ``eraserd simulate``: the planner's trade-offs, the replay of the
daemon's real flush policy against the Poisson model, and both commands end to end on a
real small model."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import yaml
from cli_util import eraserd
from click.testing import CliRunner
from conftest import small_raw

from eraserd import poisson, window_plan
from eraserd.cli import main
from eraserd.config import DaemonConfig, config_from_dict
from eraserd.eraser import Eraser
from eraserd.flush import flush_reason
from eraserd.queue import Pending
from eraserd.registry import Registry
from eraserd.simulate import format_simulation, poisson_arrivals, replay, simulate

SKEWED = [900] + [1] * 100  # one cluster holds 90% of the data, a hundred hold one sample
WINDOW_ONLY = {"max_batch_samples": 10**9, "default_deadline_s": 10 * 86400.0}

# ---- the planner ----------------------------------------------------------------------------


def skewed_times(sizes, per_sample=0.05, overhead=2.0):
    return [overhead + per_sample * m for m in sizes]


@pytest.mark.parametrize("devices", [1, 4, None])
def test_plan_recommends_the_cheapest_feasible_window(devices):
    times = skewed_times(SKEWED)
    p = window_plan.plan(SKEWED, times, 20 / 86400, 72 * 3600.0, devices, current_window_s=60)
    windows = [r.window_s for r in p.rows]
    assert windows == sorted(windows) and windows[0] == 60 and windows[-1] == 72 * 3600
    costs = [r.device_s_per_day for r in p.rows]
    assert all(a > b for a, b in zip(costs, costs[1:])), "cost must fall as T grows"
    assert all(a.expected_affected < b.expected_affected for a, b in zip(p.rows, p.rows[1:])), (
        "E[K] must grow with T"
    )
    for r in p.rows:
        assert r.worst_latency_s == pytest.approx(r.window_s + p.full_retrain_s)
        assert r.feasible == (r.worst_latency_s <= p.deadline_s and r.busy < 1)
        assert r.expected_latency_s < r.worst_latency_s
    assert not p.rows[-1].feasible  # the deadline itself leaves no time to retrain
    best = p.recommended
    assert best is not None and best.feasible
    assert best.window_s == max(r.window_s for r in p.rows if r.feasible)
    assert best.device_s_per_day == min(r.device_s_per_day for r in p.rows if r.feasible)
    # The optimum is on the grid: the deadline minus a full retrain, down to a minute.
    assert p.deadline_s - p.full_retrain_s - 60 < best.window_s <= p.deadline_s - p.full_retrain_s
    text = window_plan.format_plan(p)
    assert f"recommended: batch_window_s: {best.window_s:g}" in text and "(current)" in text


def test_plan_rows_follow_the_poisson_model():
    sizes, rate, c = [40, 30, 20, 10], 0.01, 12.0
    p = window_plan.plan(sizes, [c] * 4, rate, 86400.0, devices=1, sample_counts=[4, 3, 2, 1])
    for r in p.rows:
        t = r.window_s
        e_k = poisson.expected_affected(sizes, rate, t)
        assert r.expected_affected == pytest.approx(e_k)
        assert r.variance_affected == pytest.approx(poisson.variance_affected(sizes, rate, t))
        assert r.p_any == pytest.approx(poisson.p_any(rate, t))
        assert r.device_s_per_day == pytest.approx(86400 / t * c * e_k)
        assert r.retrains_per_day == pytest.approx(86400 / t * e_k)
        # One device: a batch retunes its K clusters one after another.
        batch = poisson.expected_batch_seconds(c, sizes, rate, t, devices=1)
        assert r.expected_batch_s * (1 - math.exp(-rate * t)) == pytest.approx(batch)
        assert r.expected_latency_s == pytest.approx(t / 2 + r.expected_batch_s)
        # A tenth of the samples are in the clustering sample.
        assert r.p_recluster == pytest.approx(poisson.p_any(rate / 10, t))
        # Against a single prompt over all data (Eq. 22 with T_s = the sum of the T_c).
        assert r.single_prompt_device_s_per_day == pytest.approx(
            86400 / t * 4 * c * poisson.p_any(rate, t)
        )


def test_more_devices_allow_a_longer_window_and_deadlines_bind():
    times = skewed_times(SKEWED, per_sample=20.0)  # a full retrain: about 5 h on one device
    one = window_plan.plan(SKEWED, times, 1 / 3600, 24 * 3600.0, devices=1)
    many = window_plan.plan(SKEWED, times, 1 / 3600, 24 * 3600.0, devices=8)
    assert many.full_retrain_s < one.full_retrain_s
    assert many.recommended.window_s > one.recommended.window_s
    assert many.recommended.device_s_per_day < one.recommended.device_s_per_day
    # A deadline shorter than a full retrain leaves nothing feasible.
    tight = window_plan.plan(SKEWED, times, 1 / 3600, one.full_retrain_s - 1, devices=1)
    assert tight.recommended is None and not any(r.feasible for r in tight.rows)
    assert "no window meets the deadline" in window_plan.format_plan(tight)


def test_the_margin_comes_off_the_deadline():
    times = skewed_times(SKEWED)
    bare = window_plan.plan(SKEWED, times, 1 / 3600, 86400.0)
    kept = window_plan.plan(SKEWED, times, 1 / 3600, 86400.0, margin_s=600.0)
    assert kept.recommended.window_s < bare.recommended.window_s
    assert kept.recommended.worst_latency_s <= 86400 - 600 < bare.recommended.worst_latency_s
    assert all(r.feasible == (r.worst_latency_s <= 86400 - 600) for r in kept.rows)
    assert "less a 10m margin" in window_plan.format_plan(kept)
    with pytest.raises(ValueError, match="margin"):
        window_plan.plan(SKEWED, times, 1 / 3600, 86400.0, margin_s=-1.0)


def test_a_runner_that_cannot_keep_up_is_infeasible():
    # 10 deletions a minute over 10 equal clusters, 30 s per cluster on one device.
    p = window_plan.plan([10] * 10, [30.0] * 10, 10 / 60, 7200.0, devices=1, windows=[60, 600])
    short, long = p.rows
    assert short.busy > 1 and not short.feasible
    assert long.busy < 1 and long.feasible and p.recommended is long


def test_full_retrain_is_largest_first_on_the_least_loaded_device():
    times = [3, 5, 3, 4, 3]
    assert window_plan.full_retrain_seconds(times, 1) == 18
    assert window_plan.full_retrain_seconds(times, 2) == 10  # LPT: {5, 3} and {4, 3, 3}
    assert window_plan.full_retrain_seconds(times, None) == 5
    assert window_plan.full_retrain_seconds(times, 9) == 5


def test_expected_largest_equals_enumeration():
    hit = np.array([0.3, 0.8, 0.1, 0.5])
    secs = np.array([10.0, 2.0, 40.0, 10.0])
    exact = 0.0
    for hits in itertools.product([0, 1], repeat=4):
        prob = np.prod([p if h else 1 - p for p, h in zip(hit, hits)])
        exact += prob * max([s for s, h in zip(secs, hits) if h], default=0.0)
    assert window_plan.expected_largest(hit, secs) == pytest.approx(exact)


def test_retune_times_measured_estimated_and_assumed():
    t = window_plan.retune_times([100, 50, 10], 2, [4.0, None, 0.5])
    per = 4.5 / (110 * 2)
    assert t.seconds == pytest.approx((4.0, 50 * 2 * per, 0.5))
    assert t.measured == 2 and "measured for 2 of 3" in t.basis
    fallback = window_plan.retune_times([100, 50], 3, [None, None], sample_epochs_per_s=300.0)
    assert fallback.seconds == pytest.approx((1.0, 0.5)) and "assumed" in fallback.basis
    # Per-cluster epochs (min_steps gives small clusters more): work is size x own epochs.
    own = window_plan.retune_times([100, 50, 10], [2, 2, 8], [4.0, None, None])
    assert own.seconds == pytest.approx((4.0, 50 * 2 * 4.0 / 200, 10 * 8 * 4.0 / 200))
    with pytest.raises(ValueError, match="one per cluster"):
        window_plan.retune_times([1, 2], [1], [None, None])
    with pytest.raises(ValueError, match="one measured time"):
        window_plan.retune_times([1, 2], 1, [None])
    with pytest.raises(ValueError, match="negative"):
        window_plan.retune_times([1], 1, [-1.0])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"rate": 0.0}, "rate"),
        ({"rate": -1.0}, "rate"),
        ({"rate": float("nan")}, "rate"),
        ({"deadline_s": 30.0}, "shortest window"),
        ({"deadline_s": float("inf")}, "deadline"),
        ({"devices": 0}, "devices"),
        ({"sizes": []}, "at least one cluster"),
        ({"sizes": [10, -1], "cluster_seconds": [1.0, 1.0]}, "non-negative"),
        ({"cluster_seconds": [1.0]}, "one retune time"),
        ({"cluster_seconds": [1.0, float("nan")]}, "retune times"),
        ({"sample_counts": [1]}, "clustering-sample"),
        ({"windows": [0.0, 60.0]}, "positive"),
    ],
)
def test_plan_refuses_bad_input(kwargs, message):
    args = {"sizes": [10, 20], "cluster_seconds": [1.0, 2.0], "rate": 0.01, "deadline_s": 3600.0}
    with pytest.raises(ValueError, match=message):
        window_plan.plan(**{**args, **kwargs})


# ---- the simulation against the model -------------------------------------------------------


@pytest.mark.parametrize(
    "rate,window_s,sizes,windows",
    [
        pytest.param(1 / 60, 60.0, [15, 73, 93, 14], 4000, id="one-per-window"),
        pytest.param(5 / 3600, 3600.0, SKEWED, 4000, id="skewed"),
        pytest.param(200.0, 2.5, [9000] + [1] * 1000, 300, id="skewed-busy"),
        pytest.param(0.05 / 60, 60.0, [1, 2, 3, 5, 8, 13, 21], 20000, id="rare"),
        pytest.param(0.02, 90.5, [2**k for k in range(10)], 3000, id="off-tick"),
    ],
)
def test_window_only_flushing_matches_the_model(rate, window_s, sizes, windows):
    policy = DaemonConfig(batch_window_s=window_s, **WINDOW_ONLY)
    s = simulate(sizes, policy, rate, windows, seed=5)
    # The daemon looks at the window once a tick: T rounded up to a whole tick.
    tick = min(1.0, window_s / 4)
    assert s.effective_window_s == pytest.approx(math.ceil(window_s / tick - 1e-9) * tick)
    assert set(s.reasons) <= {"window"}
    pred = s.predicted
    assert pred["expected_affected"] == pytest.approx(
        poisson.expected_affected(sizes, rate, s.effective_window_s)
    )
    assert abs(s.k_mean - pred["expected_affected"]) <= 3 * s.k_standard_error
    assert s.k_var == pytest.approx(pred["variance_affected"], rel=0.15)
    p = pred["p_any"]
    assert abs(s.busy_share - p) <= 3 * math.sqrt(p * (1 - p) / windows) + 1e-9
    assert s.batches == round(s.busy_share * windows)
    if s.batches > 10:
        se = math.sqrt(s.batch_k_var / s.batches) if s.batch_k_var > 0 else 1e-9
        assert abs(s.batch_k_mean - pred["batch_k_mean"]) <= 3.5 * se + 1e-9
    assert s.wait_mean_s == pytest.approx(s.effective_window_s / 2, rel=0.06)
    assert s.wait_max_s <= s.effective_window_s


def test_size_and_deadline_flushes_add_batches_beyond_the_model():
    policy = DaemonConfig(batch_window_s=3600.0, max_batch_samples=2)
    s = simulate(SKEWED, policy, 5 / 3600, 3000, seed=1)
    assert s.reasons.get("size", 0) > 0
    assert s.k_mean > s.predicted["expected_affected"] + 5 * s.k_standard_error

    policy = DaemonConfig(batch_window_s=7200.0, default_deadline_s=3600.0, deadline_margin_s=60)
    s = simulate(SKEWED, policy, 2 / 3600, 2000, seed=1, predicted_s=120.0)
    assert s.reasons.get("deadline", 0) > 0
    assert s.wait_max_s <= 3600 - 120 - 60 + 1.0  # flushed within one tick of the rule
    assert "flushes other than the window's" in format_simulation(s)


def test_replay_follows_the_daemon_exactly():
    window = DaemonConfig(batch_window_s=60.0, **WINDOW_ONLY)
    t = replay([(10.0, 0), (20.0, 0), (70.0, 1), (130.0, 2), (131.0, 0)], window, 3)
    assert t.batch_at == [60.0, 120.0, 180.0] and t.batch_reason == ["window"] * 3
    assert t.batch_k == [1, 1, 2] and t.window_k == [1, 1, 2]
    assert t.waits == [50.0, 40.0, 50.0, 50.0, 49.0]

    size = DaemonConfig(batch_window_s=60.0, max_batch_samples=2)
    t = replay([(10.0, 0), (20.0, 1), (70.0, 1)], size, 2)
    assert list(zip(t.batch_at, t.batch_reason, t.batch_k)) == [
        (20.0, "size", 2),
        (120.0, "window", 1),
    ]
    assert t.window_k == [2, 1]

    deadline = DaemonConfig(batch_window_s=600.0, default_deadline_s=100.0, deadline_margin_s=5)
    t = replay([(10.5, 3)], deadline, 1, predicted_s=10.0)
    assert list(zip(t.batch_at, t.batch_reason)) == [(96.0, "deadline")]  # 110.5 - 15 -> tick 96

    short = DaemonConfig(batch_window_s=2.0, **WINDOW_ONLY)  # ticks every 0.5 s
    t = replay([(0.1, 0), (2.2, 0)], short, 2)
    assert t.batch_at == [2.0, 4.0] and t.window_len == [2.0, 2.0]


def tick_by_tick(arrivals, policy, windows, predicted_s):
    """The daemon without skipping: every tick calls the real ``flush_reason``."""
    tick = min(1.0, policy.batch_window_s / 4)
    queued, batches, window_start, seen, i, k = [], [], 0.0, 0, 0, 0
    while seen < windows:
        k += 1
        now = k * tick
        while i < len(arrivals) and arrivals[i][0] < now:
            queued.append(arrivals[i])
            i += 1
            if len(queued) >= policy.max_batch_samples:
                batches.append((queued[-1][0], "size", len({c for _, c in queued})))
                queued = []
        first = queued[0][0] if queued else None
        pending = Pending(
            len(queued),
            len(queued),
            first,
            None if first is None else first + policy.default_deadline_s,
        )
        reason = flush_reason(pending, now, window_start, policy, predicted_s)
        if reason is not None:
            batches.append((now, reason, len({c for _, c in queued})))
            queued = []
        if now - window_start >= policy.batch_window_s:
            window_start, seen = now, seen + 1
    return batches


def test_skipping_idle_ticks_changes_nothing():
    policy = DaemonConfig(
        batch_window_s=60.0, max_batch_samples=5, default_deadline_s=50.0, deadline_margin_s=3
    )
    arrivals = list(
        itertools.islice(poisson_arrivals(np.random.default_rng(3), 0.15, SKEWED), 3000)
    )
    t = replay(arrivals, policy, 200, predicted_s=10.0)
    expected = tick_by_tick(arrivals, policy, 200, 10.0)
    assert {r for _, r, _ in expected} == {"size", "deadline", "window"}
    assert list(zip(t.batch_at, t.batch_reason, t.batch_k)) == expected


def test_simulate_refuses_bad_input():
    policy = DaemonConfig()
    with pytest.raises(ValueError, match="sizes"):
        simulate([], policy, 0.1, 10)
    with pytest.raises(ValueError, match="sizes"):
        simulate([0, 0], policy, 0.1, 10)
    with pytest.raises(ValueError, match="rate"):
        simulate([1], policy, -0.1, 10)
    with pytest.raises(ValueError, match="window"):
        simulate([1], policy, 0.1, 0)
    with pytest.raises(ValueError, match="fewer windows"):
        simulate([1], policy, 1000.0, 10**6)
    quiet = simulate([5, 5], policy, 0.0, 50)
    assert quiet.k_mean == 0 and quiet.batches == 0 and quiet.deletions == 0


# ---- end to end on a real small model -------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory, digits_data, lite0_32):
    """The test suite's small real model, built once in-process on the shared backbone."""
    root = tmp_path_factory.mktemp("plan")
    raw = small_raw(root / "state", digits_data / "manifest.csv")
    raw["daemon"] = {"batch_window_s": 120.0}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    with Eraser(config_from_dict(raw), backbone=lite0_32) as er:
        er.build()
    return path


@pytest.mark.slow
def test_plan_end_to_end(built, tmp_path):
    manifest = Registry(built.parent / "state").load()
    sizes = [c.size for c in manifest.clusters]
    out = json.loads(
        eraserd("plan", "-c", built, "--rate", "200/d", "--deadline", "72h", "--json").stdout
    )
    assert out["version"] == 1 and out["cluster_sizes"] == sizes
    assert out["rate"] == pytest.approx(200 / 86400) and out["deadline_s"] == 259200
    assert out["devices"] == 1  # the inline executor
    assert len(out["cluster_seconds"]) == len(sizes) and min(out["cluster_seconds"]) > 0
    jobs = manifest.change.jobs
    assert out["cluster_seconds"] == [jobs[c.key].seconds for c in manifest.clusters]
    assert out["retune_basis"].startswith(f"measured for {len(sizes)} of {len(sizes)}")
    rows = out["rows"]
    assert 120.0 in [r["window_s"] for r in rows] and out["current_window_s"] == 120.0
    for r in rows:
        assert r["expected_affected"] == pytest.approx(
            poisson.expected_affected(sizes, 200 / 86400, r["window_s"])
        )
    costs = [r["device_s_per_day"] for r in rows]
    assert all(a > b for a, b in zip(costs, costs[1:]))
    feasible = [r["window_s"] for r in rows if r["feasible"]]
    assert out["recommended_window_s"] == max(feasible) == out["recommended"]["window_s"]
    assert out["margin_s"] == 60.0  # the daemon's deadline_margin_s
    assert out["recommended"]["worst_latency_s"] <= 259200 - 60

    png = tmp_path / "plan.png"
    text = eraserd(
        "plan", "-c", built, "--rate", "0.01", "--deadline", "3d", "--devices", "2", "--plot", png
    ).stdout
    assert text.startswith(f"version 1: {len(sizes)} clusters")
    assert "2 device(s)" in text and "recommended: batch_window_s:" in text
    assert "(current)" in text and "device-s/day" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.slow
def test_simulate_end_to_end(built):
    sizes = [c.size for c in Registry(built.parent / "state").load().clusters]
    out = json.loads(
        eraserd("simulate", "-c", built, "--windows", "3000", "--seed", "4", "--json").stdout
    )
    assert out["version"] == 1 and out["seed"] == 4 and out["windows"] == 3000
    assert out["window_s"] == 120.0 and out["rate"] == pytest.approx(1 / 120)  # one per window
    assert out["reasons"] == {"window": out["batches"]}
    e_k = poisson.expected_affected(sizes, 1 / 120, 120.0)
    assert out["predicted"]["expected_affected"] == pytest.approx(e_k)
    assert abs(out["k_mean"] - e_k) <= 3 * out["k_standard_error"]
    text = eraserd("simulate", "-c", built, "--rate", "30/h", "--windows", "500").stdout
    assert "E[K] per window" in text and "observed" in text and "predicted" in text


def test_cli_errors(tmp_path, digits_data):
    raw = small_raw(tmp_path / "state", digits_data / "manifest.csv")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    runner = CliRunner()
    bad_rate = runner.invoke(main, ["plan", "-c", str(path), "--rate", "5/y", "--deadline", "3d"])
    assert bad_rate.exit_code == 2 and "not a rate" in bad_rate.output
    bad_deadline = runner.invoke(
        main, ["plan", "-c", str(path), "--rate", "5/h", "--deadline", "soon"]
    )
    assert bad_deadline.exit_code == 2 and "not a duration" in bad_deadline.output
    # No model yet: a clear error naming `eraserd build`, and nothing is built.
    for args in (["plan", "--rate", "5/h", "--deadline", "3d"], ["simulate"]):
        r = runner.invoke(main, [*args, "-c", str(path), "--json"])
        assert r.exit_code == 5, r.output
        err = json.loads(r.output)
        assert err["type"] == "RegistryError" and "eraserd build" in err["error"]
    assert Registry(tmp_path / "state").current() is None
    assert not (tmp_path / "state" / "registry").exists()
