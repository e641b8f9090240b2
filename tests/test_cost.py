"""The deletion-cost model: bounded clusters, exact replays, and the expected retrain share.

Pure and fast: synthetic features with real structure (blobs of very different sizes), the
real partition code, and brute force to check against.
"""

from __future__ import annotations

import numpy as np
import pytest

from eraserd.clustering import (
    Router,
    build_partition,
    clustering_sample,
    nearest,
    remove_members,
    upper_share,
)
from eraserd.cost import REPLAY_DRIFT, Replay, Rule, carried, evaluation_points

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`

IDS = [f"p{i:04d}" for i in range(260)]
SIZES = (120, 60, 40, 20, 12, 8)
"""One blob holds almost half the data: unbounded, it would be one cluster."""


def features(ids: list[str] = IDS, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=6.0, size=(len(SIZES), 8))
    which = np.repeat(np.arange(len(SIZES)), SIZES)
    x = centers[which[: len(ids)]] + rng.normal(size=(len(ids), 8)) * 1.5
    return {i: v.astype(np.float32) for i, v in zip(ids, x)}


RULES = [
    {"distance_threshold": 9.0, "n_clusters": None, "max_share": None},
    {"distance_threshold": 9.0, "n_clusters": None, "max_share": 0.15},
    {"distance_threshold": None, "n_clusters": 3, "max_share": 0.2},
    {"distance_threshold": 9.0, "n_clusters": None, "max_share": 0.2, "min_points": 3},
]
RULE_IDS = ["threshold", "threshold+cap", "n_clusters+cap", "threshold+cap+min_points"]
SEED, SAMPLE = 5, 60


def cost_of(ids, feats, rule: dict, part, sample: int = SAMPLE, **kwargs):
    return Replay(ids, feats, SEED, sample).cost(Rule(**rule), part, **kwargs)


def same(a, b) -> None:
    assert a.keys == b.keys
    assert a.prototypes.tobytes() == b.prototypes.tobytes()
    assert a.members == b.members
    assert a.sample == b.sample


def real_retrained(ids, feats, rule, before, gone: str) -> int:
    """Samples retrained when ``gone`` alone is deleted, the way ``forget`` decides it."""
    rest = [i for i in ids if i != gone]
    if gone in before.sample:
        after = build_partition(rest, feats, SEED, SAMPLE, **rule)
    else:
        after = remove_members(before, {gone})
    old = set(before.members)
    return sum(len(m) for m in after.members if m not in old)


def test_router_matches_nearest_bitwise():
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(300, 17)).astype(np.float32)
    protos = rng.normal(size=(9, 17)).astype(np.float32)
    protos[4] = protos[2]  # a tie: the lower index wins in both
    router = Router(rows)
    assert np.array_equal(router.nearest(protos), nearest(rows, protos))
    sub = np.array([5, 0, 299, 17])
    assert np.array_equal(router.nearest(protos[::-1], sub), nearest(rows[sub], protos[::-1]))
    assert np.array_equal(Router(rows).nearest(protos), nearest(rows, protos, chunk=7))


def test_cap_bounds_every_cluster_on_the_sample():
    feats = features()
    free = build_partition(IDS, feats, SEED, SAMPLE, 9.0, None, None)
    assert max(free.sizes()) / len(IDS) > 0.35, "the data needs one dominant cluster"
    for cap in (0.3, 0.15, 0.08):
        part = build_partition(IDS, feats, SEED, SAMPLE, 9.0, None, cap)
        sample = clustering_sample(IDS, SEED, SAMPLE)
        x = np.stack([feats[i] for i in sample])
        routed = np.bincount(nearest(x, part.prototypes), minlength=len(part.keys))
        for k, members in enumerate(part.members):
            in_sample = [i for i in members if i in part.sample]
            assert len(in_sample) == 1 or len(in_sample) <= cap * SAMPLE
            assert len(in_sample) == 1 or routed[k] <= cap * SAMPLE
        assert len(part.keys) > len(free.keys)
        # Splitting only refines the uncapped clusters on the sample.
        parent = free.cluster_of()
        for members in part.members:
            assert len({parent[i] for i in members if i in part.sample}) == 1


@pytest.mark.parametrize("rule", [RULES[1], RULES[3]], ids=[RULE_IDS[1], RULE_IDS[3]])
def test_cap_keeps_non_sample_deletions_local(rule):
    feats = features()
    full = build_partition(IDS, feats, SEED, SAMPLE, **rule)
    outside = [i for i in IDS if i not in full.sample]
    for x in outside[::37]:
        fresh = build_partition([i for i in IDS if i != x], feats, SEED, SAMPLE, **rule)
        same(fresh, remove_members(full, {x}))
        changed = [k for k, (a, b) in enumerate(zip(full.members, fresh.members)) if a != b]
        assert changed == [full.cluster_of()[x]]


def test_small_clusters_are_dissolved_within_the_cap():
    """Slivers of a few sample points (outliers, or what the cap cut off) join the nearest
    cluster that has room; the cap still holds, and the large clusters stay."""
    feats = features()
    sample = clustering_sample(IDS, SEED, SAMPLE)
    capped = build_partition(IDS, feats, SEED, SAMPLE, 9.0, None, 0.2)
    same(build_partition(IDS, feats, SEED, SAMPLE, 9.0, None, 0.2, min_points=1), capped)
    own = [sorted(set(m) & capped.sample) for m in capped.members]
    assert min(len(o) for o in own) < 3, "the capped partition needs a sliver to dissolve"
    part = build_partition(IDS, feats, SEED, SAMPLE, 9.0, None, 0.2, min_points=3)
    counts = [sum(1 for i in m if i in part.sample) for m in part.members]
    assert min(counts) >= 3 and upper_share(max(counts), SAMPLE) <= 0.2
    big = [o for o in own if len(o) >= 3]
    assert len(part.keys) == len(big)
    cluster = part.cluster_of()
    assert [len({cluster[i] for i in b}) for b in big] == [1] * len(big)
    # Each dissolved point, in rank order, joined the nearest large cluster with room.
    x = np.stack([feats[i] for i in sample])
    protos = np.stack([np.stack([feats[i] for i in b]).astype(np.float64).mean(0) for b in big])
    filled = [len(b) for b in big]
    for row, i in enumerate(sample):
        if any(i in b for b in big):
            continue
        d = ((x[row].astype(np.float64) - protos) ** 2).sum(1)
        k = next(k for k in np.argsort(d) if upper_share(filled[k] + 1, SAMPLE) <= 0.2)
        assert cluster[i] == cluster[big[k][0]]
        filled[k] += 1


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_replay_is_a_fresh_build(rule):
    feats = features()
    part = build_partition(IDS, feats, SEED, SAMPLE, **rule)
    replay = Replay(IDS, feats, SEED, SAMPLE)
    r = Rule(**rule)
    same(replay.partition(r), part)
    for x in sorted(part.sample)[::4]:
        fresh = build_partition([i for i in IDS if i != x], feats, SEED, SAMPLE, **rule)
        same(replay.partition(r, x), fresh)
        samples, clusters = replay.retrained(r, part, x)
        assert samples == real_retrained(IDS, feats, rule, part, x)
        assert 0 <= clusters <= len(fresh.keys)  # 0: a cluster of x alone vanished


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_expected_share_is_the_mean_over_every_deletion(rule):
    """With every sample point replayed, the formula is exact: it equals the mean over all
    N single deletions, each decided by the real partition code."""
    feats = features()
    part = build_partition(IDS, feats, SEED, SAMPLE, **rule)
    cost = cost_of(IDS, feats, rule, part, evaluations=SAMPLE)
    assert cost.evaluated == SAMPLE and cost.recluster_share_se == 0.0
    brute = [real_retrained(IDS, feats, rule, part, x) / (len(IDS) - 1) for x in IDS]
    assert cost.expected_retrain_share == pytest.approx(np.mean(brute), rel=1e-12)
    assert cost.p_recluster == SAMPLE / len(IDS)
    assert cost.largest_share == max(part.sizes()) / len(IDS)


def test_expected_share_against_monte_carlo():
    """A subsampled estimate against random single deletions replayed through the real code:
    within 3 standard errors of each other."""
    rule = RULES[1]
    feats = features()
    part = build_partition(IDS, feats, SEED, SAMPLE, **rule)
    cost = cost_of(IDS, feats, rule, part, evaluations=24)
    assert cost.evaluated == 24 and cost.recluster_share_se > 0
    rng = np.random.default_rng(11)
    draws = [IDS[i] for i in rng.integers(0, len(IDS), size=400)]
    shares = np.array([real_retrained(IDS, feats, rule, part, x) for x in draws]) / (len(IDS) - 1)
    mc_se = shares.std(ddof=1) / np.sqrt(len(shares))
    model_se = cost.p_recluster * cost.recluster_share_se
    gap = abs(shares.mean() - cost.expected_retrain_share)
    assert gap <= 3 * np.hypot(mc_se, model_se), (shares.mean(), cost)


def test_cap_makes_deletions_cheaper():
    feats = features()
    free, capped = RULES[0], RULES[1]
    a = build_partition(IDS, feats, SEED, SAMPLE, **free)
    b = build_partition(IDS, feats, SEED, SAMPLE, **capped)
    ca = cost_of(IDS, feats, free, a, evaluations=SAMPLE)
    cb = cost_of(IDS, feats, capped, b, evaluations=SAMPLE)
    assert cb.largest_share < ca.largest_share
    assert cb.direct_share < ca.direct_share
    assert cb.expected_retrain_share < ca.expected_retrain_share


def test_evaluation_points_are_stable_and_bounded():
    sample = clustering_sample(IDS, SEED, SAMPLE)
    assert evaluation_points(sample, SEED, 100) == sorted(sample)
    some = evaluation_points(sample, SEED, 10)
    assert len(some) == 10 and set(some) <= set(sample)
    assert evaluation_points(sample[::-1], SEED, 10) == some
    assert evaluation_points(sample, SEED + 1, 10) != some


def test_single_sample_and_tiny_data():
    feats = features(IDS[:1])
    part = build_partition(IDS[:1], feats, SEED, SAMPLE, 9.0, None, 0.5)
    cost = cost_of(
        IDS[:1], feats, {"distance_threshold": 9.0, "n_clusters": None, "max_share": 0.5}, part
    )
    assert cost.expected_retrain_share == 1.0 and cost.clusters == 1
    feats = features(IDS[:5])
    part = build_partition(IDS[:5], feats, SEED, 3, 9.0, None, None)
    cost = cost_of(IDS[:5], feats, {"distance_threshold": 9.0, "n_clusters": None}, part, sample=3)
    assert 0 < cost.expected_retrain_share <= 1 and cost.evaluated == 3


def test_compute_share_counts_each_cluster_at_its_own_epochs():
    """With equal epochs, compute share is the sample share; with a floor on steps (small
    clusters train longer), it is the brute-force mean of each deletion's retrain work over
    one prompt's work on the remaining data."""
    rule = RULES[1]
    feats = features()
    part = build_partition(IDS, feats, SEED, SAMPLE, **rule)
    plain = cost_of(IDS, feats, rule, part, evaluations=SAMPLE)
    assert plain.expected_compute_share == pytest.approx(plain.expected_retrain_share)

    def steps(m: int) -> float:  # at least 40 steps of 8, else 3 epochs
        return float(m * max(3, -(-40 // -(-m // 8))))

    floor = cost_of(IDS, feats, rule, part, evaluations=SAMPLE, steps=steps)
    replay = Replay(IDS, feats, SEED, SAMPLE)
    r = Rule(**rule)
    where = part.cluster_of()
    work = []
    for x in IDS:
        if x in part.sample:
            work.append(sum(steps(m) for m in replay.changed(r, part, x)))
        else:
            work.append(steps(len(part.members[where[x]]) - 1))
    brute = np.mean(work) / steps(len(IDS) - 1)
    assert floor.expected_compute_share == pytest.approx(brute, rel=1e-12)
    assert floor.expected_compute_share > floor.expected_retrain_share


def test_carried_cost_keeps_the_replay_until_the_data_drifts():
    """After non-sample deletions the direct terms are recomputed exactly and the replayed
    recluster terms are kept, until the data has shrunk by REPLAY_DRIFT."""
    rule = RULES[1]
    feats = features()
    part = build_partition(IDS, feats, SEED, SAMPLE, **rule)
    before = cost_of(IDS, feats, rule, part, evaluations=16).to_dict()
    outside = [i for i in IDS if i not in part.sample]
    for gone in (outside[:1], outside[: int(REPLAY_DRIFT * len(IDS))]):
        rest = [i for i in IDS if i not in gone]
        after = remove_members(part, set(gone))
        kept = carried(before, after)
        fresh = cost_of(rest, feats, rule, after, evaluations=16)
        for key in ("train", "sample", "clusters", "largest_share", "direct_share", "p_recluster"):
            assert getattr(kept, key) == pytest.approx(getattr(fresh, key), rel=1e-12), key
        for key in ("recluster_share", "recluster_clusters", "evaluated", "replayed_train"):
            assert getattr(kept, key) == before[key], key
        p = kept.p_recluster
        assert kept.expected_retrain_share == pytest.approx(
            (1 - p) * kept.direct_share + p * kept.recluster_share
        )
    gone = set(outside[: int(REPLAY_DRIFT * len(IDS)) + 1])
    assert carried(before, remove_members(part, gone)) is None
    old = {k: v for k, v in before.items() if k != "replayed_train"}
    assert carried(old, remove_members(part, {outside[0]})) is None
