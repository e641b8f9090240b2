"""Random partitioning (``clustering.method: random``, ``randomsplit.py``): each sample's group
depends on the seed and its own id only, so a forget equals a fresh build on what is left and
retrains the deleted samples' groups alone, sample points included."""

from __future__ import annotations

import numpy as np
import pytest

from eraserd.clustering import ranked
from eraserd.config import config_from_dict
from eraserd.cost import Replay, Rule, evaluation_points
from eraserd.errors import ConfigError
from eraserd.randomsplit import group_key, group_of, random_partition, shares_of
from eraserd.unlearning import Settings, decide

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`

SEED = 11


def data(n: int, dim: int = 6, seed: int = 0) -> tuple[list[str], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    ids = [f"s{i:05d}" for i in range(n)]
    return ids, {i: rng.normal(size=dim).astype(np.float32) for i in ids}


def settings(k: int = 5, sample: int = 80, shares=None) -> Settings:
    return Settings(SEED, sample, Rule(None, k, method="random", shares=shares))


def test_a_group_depends_on_the_seed_and_the_id_alone():
    ids, _ = data(3000)
    shares = shares_of(4, (1, 2, 3, 4))
    whole = dict(zip(ids, group_of(ids, SEED, shares).tolist()))
    part = ids[::7]
    assert dict(zip(part, group_of(part, SEED, shares).tolist())) == {i: whole[i] for i in part}
    got = np.bincount(list(whole.values()), minlength=4) / len(ids)
    assert np.allclose(got, [0.1, 0.2, 0.3, 0.4], atol=0.03), got
    other = group_of(ids, SEED + 1, shares).tolist()
    assert other != list(whole.values()), "the seed must move the groups"


@pytest.mark.parametrize("in_sample", [False, True], ids=["non-sample", "sample point"])
def test_a_forget_equals_a_fresh_build_and_retrains_one_group(in_sample):
    ids, feats = data(600)
    s = settings()
    current = s.partition(ids, feats)
    assert len(current.keys) == 5 and sorted(current.keys) == list(current.keys)
    assert set(current.keys) == {group_key(g) for g in range(5)}
    pool = sorted(current.sample) if in_sample else sorted(set(ids) - current.sample)
    gone = pool[:1]
    d = decide(current, gone, s, feats)
    fresh = s.partition([i for i in ids if i not in gone], feats)
    assert d.partition.keys == fresh.keys and d.partition.members == fresh.members
    assert d.partition.sample == fresh.sample
    assert np.array_equal(d.partition.prototypes, fresh.prototypes)
    assert d.recluster is in_sample
    assert len(d.retrain) == 1 and d.affected == d.retrain  # keys are the groups' indices
    assert d.retrained_samples == len(current.members[current.keys.index(d.affected[0])]) - 1


def test_prototypes_are_the_means_of_each_groups_sample_points():
    ids, feats = data(400)
    part = settings(k=3, sample=50).partition(ids, feats)
    for proto, members in zip(part.prototypes, part.members):
        points = [i for i in members if i in part.sample]
        want = np.stack([feats[i] for i in points]).astype(np.float64).mean(0)
        assert np.array_equal(proto, want.astype(np.float32))


def test_a_group_without_a_clustering_sample_point_gets_its_lowest_ranked_member():
    """With 3 clustering-sample points and 12 groups, most groups have none: each such group's
    prototype is its member of lowest rank, which counts as a sample point, so deleting it
    reclusters and deleting any other member does not; both equal a fresh build."""
    ids, feats = data(300)
    s = settings(k=12, sample=3)
    part = s.partition(ids, feats)
    order = ranked(ids, SEED)
    top = set(order[:3])
    assert len(part.keys) == 12 and top <= part.sample and len(part.sample) > 3
    for proto, members in zip(part.prototypes, part.members):
        points = [i for i in members if i in top] or [min(members, key=order.index)]
        assert sorted(points) == sorted(set(members) & part.sample)
        want = np.stack([feats[i] for i in points]).astype(np.float64).mean(0)
        assert np.array_equal(proto, want.astype(np.float32))
    stand_in = sorted(part.sample - top)[0]
    other = next(i for i in ids if i not in part.sample)
    for gone, recluster in (([stand_in], True), ([other], False)):
        d = decide(part, gone, s, feats)
        fresh = s.partition([i for i in ids if i not in gone], feats)
        assert d.recluster is recluster and len(d.retrain) == 1
        assert d.partition.members == fresh.members and d.partition.sample == fresh.sample
        assert np.array_equal(d.partition.prototypes, fresh.prototypes)


def test_a_group_left_without_members_is_left_out():
    ids, feats = data(40)
    part = random_partition(ids, feats, SEED, 10, shares_of(3, (1000, 1000, 1)))
    assert len(part.keys) == 2 and sum(part.sizes()) == 40


def test_the_replayed_cost_matches_the_groups():
    """Every deletion retrains its own group, sample points included: the direct terms and
    the replayed recluster terms both equal the deleted point's group size minus one."""
    ids, feats = data(500)
    s = settings(k=4, sample=60)
    part = s.partition(ids, feats)
    replay = Replay(ids, feats, SEED, 60)
    cost = replay.cost(s.rule, part, evaluations=20)
    n, size = len(ids), {i: len(m) for m in part.members for i in m}
    outside = [i for i in ids if i not in part.sample]
    assert cost.direct_share == pytest.approx(
        sum(size[i] - 1 for i in outside) / len(outside) / (n - 1)
    )
    points = evaluation_points(replay.sample, SEED, 20)
    assert cost.recluster_clusters == 1.0
    assert cost.recluster_share == pytest.approx(
        sum(size[i] - 1 for i in points) / len(points) / (n - 1)
    )


@pytest.mark.parametrize(
    "clustering, message",
    [
        ({"method": "random", "n_clusters": None}, "clustering.method: random needs n_clusters"),
        ({"method": "random", "n_clusters": 4, "distance_threshold": 3.0}, "needs n_clusters"),
        (
            {
                "method": "random",
                "n_clusters": 4,
                "distance_threshold": None,
                "max_cluster_share": 0.5,
            },
            "takes no max_cluster_share",
        ),
        (
            {"method": "random", "n_clusters": 4, "distance_threshold": None, "shares": [1, 2]},
            "clustering.shares: must be 4 positive numbers",
        ),
        (
            {
                "method": "random",
                "n_clusters": 4,
                "distance_threshold": None,
                "shares": [1, 2, 0, 1],
            },
            "clustering.shares: must be 4 positive numbers",
        ),
        ({"shares": [1, 1]}, "clustering.shares: applies to method random only"),
        ({"method": "kmeans"}, "method"),
    ],
)
def test_bad_random_settings_are_refused_by_name(tmp_path, clustering, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"state_dir": str(tmp_path), "clustering": clustering})
