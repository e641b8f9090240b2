"""The paper's batch-unlearning model (Appendix 2), as pure functions.

Deletion requests arrive as a Poisson process of ``rate`` samples per second, uniform over the
``N = sum(sizes)`` private samples. Over a batch window ``T`` cluster ``i`` (``m_i`` samples) is
hit with probability ``P_i = 1 - exp(-(m_i / N) * rate * T)``, independently of the others, so
the number of affected clusters ``K`` is Poisson-binomial:

* ``E[K] = sum(P_i)`` (Eq. 9), ``Var[K] = sum(P_i * (1 - P_i))`` (Eq. 17);
* ``P(any) = 1 - exp(-rate * T)`` (Eq. 21);
* ``E[T_LMEraser] = T_c * P(any)`` with unlimited parallel devices (Eq. 19), and the
  efficiency gain over a single prompt is ``T_s / T_c`` (Eq. 24).

No I/O, no clocks: the daemon's metrics, ``eraserd plan`` and ``eraserd simulate`` share these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _check(sizes: Sequence[int], rate: float, window_s: float) -> np.ndarray:
    m = np.asarray(sizes, dtype=np.float64)
    if m.ndim != 1 or (m.size and (not np.isfinite(m).all() or m.min() < 0)):
        raise ValueError("cluster sizes must be a list of non-negative counts")
    if rate < 0 or not math.isfinite(rate):
        raise ValueError(f"rate must be a finite non-negative number, got {rate}")
    if window_s < 0 or not math.isfinite(window_s):
        raise ValueError(f"window must be a finite non-negative number, got {window_s}")
    return m


def cluster_hit_probabilities(sizes: Sequence[int], rate: float, window_s: float) -> np.ndarray:
    """``P_i``: the chance that cluster ``i`` receives at least one deletion in the window."""
    m = _check(sizes, rate, window_s)
    total = m.sum()
    if total == 0:
        return np.zeros_like(m)
    return -np.expm1(-(m / total) * rate * window_s)


def expected_affected(sizes: Sequence[int], rate: float, window_s: float) -> float:
    """``E[K]`` (Eq. 9)."""
    return float(cluster_hit_probabilities(sizes, rate, window_s).sum())


def variance_affected(sizes: Sequence[int], rate: float, window_s: float) -> float:
    """``Var[K]`` (Eq. 17)."""
    p = cluster_hit_probabilities(sizes, rate, window_s)
    return float((p * (1.0 - p)).sum())


def p_any(rate: float, window_s: float) -> float:
    """``P(K >= 1) = 1 - exp(-rate * T)`` (Eq. 21)."""
    _check([], rate, window_s)
    return float(-math.expm1(-rate * window_s))


def affected_distribution(sizes: Sequence[int], rate: float, window_s: float) -> np.ndarray:
    """``P(K = k)`` for ``k = 0..len(sizes)``: the Poisson-binomial law, by dynamic programming."""
    pmf = np.zeros(len(sizes) + 1)
    pmf[0] = 1.0
    for p in cluster_hit_probabilities(sizes, rate, window_s):
        pmf[1:] = pmf[1:] * (1.0 - p) + pmf[:-1] * p
        pmf[0] *= 1.0 - p
    return pmf


def expected_batch_seconds(
    cluster_seconds: float,
    sizes: Sequence[int],
    rate: float,
    window_s: float,
    devices: int | None = None,
) -> float:
    """Expected processing time of one window's batch, retuning ``T_c`` seconds per cluster.

    ``devices=None`` is the paper's unlimited parallelism, ``T_c * P(any)`` (Eq. 19); with
    ``d`` devices the affected clusters run in ``ceil(K / d)`` rounds; ``d = 1`` gives
    ``T_c * E[K]``.
    """
    if not (cluster_seconds >= 0 and math.isfinite(cluster_seconds)):
        raise ValueError(f"cluster seconds must be finite and non-negative, got {cluster_seconds}")
    if devices is None:
        return cluster_seconds * p_any(rate, window_s)
    if devices < 1:
        raise ValueError("devices must be at least 1")
    pmf = affected_distribution(sizes, rate, window_s)
    rounds = np.ceil(np.arange(pmf.size) / devices)
    return float(cluster_seconds * (pmf * rounds).sum())


def expected_work_seconds(
    sizes: Sequence[int], rate: float, window_s: float, seconds_per_sample: float
) -> float:
    """Expected device-seconds per window when cluster ``i`` costs ``m_i * seconds_per_sample``.

    A size-aware refinement of ``T_c * E[K]``: big clusters are both hit more often and dearer.
    """
    p = cluster_hit_probabilities(sizes, rate, window_s)
    return float((p * np.asarray(sizes, dtype=np.float64)).sum() * seconds_per_sample)


def efficiency_gain(single_seconds: float, cluster_seconds: float) -> float:
    """``T_s / T_c`` (Eq. 24); ``nan`` while ``T_c`` is unknown."""
    if cluster_seconds <= 0:
        return float("nan")
    return single_seconds / cluster_seconds
