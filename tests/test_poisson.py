"""The batch model's formulas against a Monte Carlo of the process they describe: Poisson
arrival times, each deleting a sample drawn uniformly from all samples, counted per window."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from eraserd import poisson

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`

SKEWED = [900] + [1] * 100  # one cluster holds 90% of the data, a hundred hold one sample
SETTINGS = [
    # (rate per second, window seconds, sizes, windows simulated)
    pytest.param(0.01, 60.0, [50] * 10, 20_000, id="equal"),
    pytest.param(5 / 3600, 3600.0, SKEWED, 20_000, id="skewed"),
    pytest.param(200.0, 2.5, [9000] + [1] * 1000, 2_000, id="skewed-busy"),
    pytest.param(0.05 / 60, 60.0, [1, 2, 3, 5, 8, 13, 21], 20_000, id="rare"),
    pytest.param(3.0, 4.0, [2**k for k in range(12)], 5_000, id="geometric"),
]


def affected_per_window(rng, sizes, rate, window_s, windows):
    """Distinct clusters hit in each of ``windows`` consecutive windows."""
    n = rng.poisson(rate * window_s * windows * 1.05) + 50
    times = np.cumsum(rng.exponential(1.0 / rate, n))
    assert times[-1] > window_s * windows, "draw more arrivals"
    times = times[times < window_s * windows]
    samples = rng.integers(0, sum(sizes), times.size)
    clusters = np.searchsorted(np.cumsum(sizes), samples, side="right")
    window = (times // window_s).astype(np.int64)
    hit = np.zeros((windows, len(sizes)), dtype=bool)
    hit[window, clusters] = True
    return hit


@pytest.mark.parametrize("rate,window_s,sizes,windows", SETTINGS)
def test_formulas_match_simulation(rate, window_s, sizes, windows):
    hit = affected_per_window(np.random.default_rng(11), sizes, rate, window_s, windows)
    k = hit.sum(axis=1)
    e_k = poisson.expected_affected(sizes, rate, window_s)
    var_k = poisson.variance_affected(sizes, rate, window_s)

    assert abs(k.mean() - e_k) <= 3 * math.sqrt(var_k / windows)
    # The sample variance within 4 of its own standard errors (from the fourth moment).
    centred = k - k.mean()
    se_var = math.sqrt(max((centred**4).mean() - k.var() ** 2, 1e-12) / windows)
    assert abs(k.var(ddof=1) - var_k) <= 4 * se_var
    # Per cluster, too: the hit frequency of each cluster is P_i.
    p_i = poisson.cluster_hit_probabilities(sizes, rate, window_s)
    se_i = np.sqrt(np.maximum(p_i * (1 - p_i), 1e-12) / windows)
    assert np.all(np.abs(hit.mean(axis=0) - p_i) <= 4.5 * se_i + 1e-12)

    any_hit = poisson.p_any(rate, window_s)
    assert abs((k > 0).mean() - any_hit) <= 3 * math.sqrt(any_hit * (1 - any_hit) / windows) + 1e-9

    # The bounds of Eqs. 15 and 17.
    assert e_k <= rate * window_s + 1e-12 and var_k <= rate * window_s + 1e-12
    assert e_k <= len(sizes)


@pytest.mark.parametrize("rate,window_s,sizes,windows", SETTINGS)
def test_distribution_matches_simulated_frequencies(rate, window_s, sizes, windows):
    pmf = poisson.affected_distribution(sizes, rate, window_s)
    assert pmf.shape == (len(sizes) + 1,)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12) and pmf.min() >= 0
    ks = np.arange(pmf.size)
    assert (ks * pmf).sum() == pytest.approx(poisson.expected_affected(sizes, rate, window_s))
    mean = (ks * pmf).sum()
    assert ((ks - mean) ** 2 * pmf).sum() == pytest.approx(
        poisson.variance_affected(sizes, rate, window_s)
    )

    k = affected_per_window(np.random.default_rng(12), sizes, rate, window_s, windows).sum(1)
    observed = np.bincount(k, minlength=pmf.size)
    # Pearson chi-square over bins pooled to an expected count of at least 5.
    expected = pmf * windows
    obs_bins, exp_bins, o, e = [], [], 0.0, 0.0
    for ob, ex in zip(observed, expected):
        o, e = o + ob, e + ex
        if e >= 5:
            obs_bins.append(o)
            exp_bins.append(e)
            o = e = 0.0
    obs_bins[-1] += o
    exp_bins[-1] += e
    obs_bins, exp_bins = np.array(obs_bins), np.array(exp_bins)
    if len(exp_bins) > 1:
        chi2 = (((obs_bins - exp_bins) ** 2) / exp_bins).sum()
        assert stats.chi2.sf(chi2, len(exp_bins) - 1) > 1e-3
    # And no single count is off by more than 4.5 standard errors.
    se = np.sqrt(pmf * (1 - pmf) / windows)
    assert np.all(np.abs(observed / windows - pmf) <= 4.5 * se + 1e-9)


def test_distribution_equals_enumeration_of_hit_sets():
    sizes, rate, window_s = [1, 4, 10, 25, 60], 0.02, 30.0
    p = poisson.cluster_hit_probabilities(sizes, rate, window_s)
    exact = np.zeros(len(sizes) + 1)
    for hits in itertools.product([0, 1], repeat=len(sizes)):
        exact[sum(hits)] += np.prod([pi if h else 1 - pi for pi, h in zip(p, hits)])
    np.testing.assert_allclose(poisson.affected_distribution(sizes, rate, window_s), exact)
    # Independent hits: nothing hit at all is exactly exp(-rate * T).
    assert exact[0] == pytest.approx(math.exp(-rate * window_s))


@pytest.mark.parametrize("rate,window_s,sizes,windows", SETTINGS[:4])
def test_expected_batch_seconds(rate, window_s, sizes, windows):
    t_c = 7.5
    e_k = poisson.expected_affected(sizes, rate, window_s)
    assert poisson.expected_batch_seconds(t_c, sizes, rate, window_s, devices=1) == pytest.approx(
        t_c * e_k
    )
    assert poisson.expected_batch_seconds(t_c, sizes, rate, window_s) == pytest.approx(
        t_c * poisson.p_any(rate, window_s)
    )
    # As many devices as clusters: one round whenever anything is hit, which is Eq. 19.
    assert poisson.expected_batch_seconds(
        t_c, sizes, rate, window_s, devices=len(sizes)
    ) == pytest.approx(t_c * poisson.p_any(rate, window_s))

    # Two devices: ceil(K / 2) rounds, against the simulation.
    k = affected_per_window(np.random.default_rng(13), sizes, rate, window_s, windows).sum(1)
    rounds = np.ceil(k / 2) * t_c
    predicted = poisson.expected_batch_seconds(t_c, sizes, rate, window_s, devices=2)
    assert abs(rounds.mean() - predicted) <= 3.5 * rounds.std() / math.sqrt(windows) + 1e-9
    # More devices never take longer.
    times = [
        poisson.expected_batch_seconds(t_c, sizes, rate, window_s, devices=d) for d in (1, 2, 4)
    ]
    assert times[0] >= times[1] >= times[2]


def test_expected_work_seconds_matches_simulation():
    sizes, rate, window_s, windows = SKEWED, 20 / 3600, 3600.0, 20_000
    hit = affected_per_window(np.random.default_rng(14), sizes, rate, window_s, windows)
    work = (hit * np.array(sizes) * 0.01).sum(1)
    predicted = poisson.expected_work_seconds(sizes, rate, window_s, 0.01)
    assert abs(work.mean() - predicted) <= 3 * work.std() / math.sqrt(windows)
    # Big clusters are hit more often and cost more: well above T_c * E[K] at the mean size.
    mean_cost = 0.01 * np.mean(sizes)
    assert predicted > 3 * mean_cost * poisson.expected_affected(sizes, rate, window_s)


def test_edges():
    assert poisson.expected_affected([10, 20], 0.0, 100.0) == 0.0
    assert poisson.p_any(0.5, 0.0) == 0.0
    assert poisson.affected_distribution([10, 20], 0.0, 1.0).tolist() == [1.0, 0.0, 0.0]
    assert poisson.expected_affected([0, 0], 1.0, 1.0) == 0.0
    # A huge rate hits every non-empty cluster.
    assert poisson.expected_affected([5, 0, 1], 1e6, 10.0) == pytest.approx(2.0)
    assert poisson.efficiency_gain(300.0, 12.0) == pytest.approx(25.0)
    assert math.isnan(poisson.efficiency_gain(300.0, 0.0))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: poisson.expected_affected([3, -1], 1.0, 1.0), "non-negative"),
        (lambda: poisson.expected_affected([[1, 2]], 1.0, 1.0), "non-negative"),
        (lambda: poisson.expected_affected(5, 1.0, 1.0), "non-negative"),
        (lambda: poisson.expected_affected([1], -0.1, 1.0), "rate"),
        (lambda: poisson.variance_affected([1], float("nan"), 1.0), "rate"),
        (lambda: poisson.p_any(float("inf"), 1.0), "rate"),
        (lambda: poisson.p_any(1.0, -1.0), "window"),
        (lambda: poisson.affected_distribution([1], 1.0, float("inf")), "window"),
        (lambda: poisson.expected_batch_seconds(-1.0, [1], 1.0, 1.0), "negative"),
        (lambda: poisson.expected_batch_seconds(float("nan"), [1], 1.0, 1.0), "finite"),
        (lambda: poisson.expected_affected([1, float("nan")], 1.0, 1.0), "non-negative"),
        (lambda: poisson.expected_batch_seconds(1.0, [1], 1.0, 1.0, devices=0), "devices"),
        (lambda: poisson.expected_work_seconds([1, -2], 1.0, 1.0, 0.1), "non-negative"),
    ],
)
def test_invalid_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
