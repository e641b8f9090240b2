"""Pure clustering and id hashing: deletion stability, canonical order, exact routing."""

from __future__ import annotations

import random

import numpy as np
import pytest

from eraserd.clustering import (
    Routing,
    build_partition,
    clustering_sample,
    hac_labels,
    merge_heights,
    nearest,
    remove_members,
    routing_points,
    vote,
)
from eraserd.ids import cluster_key, member_seed, private_key

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`

IDS = [f"s{i:03d}" for i in range(80)]
CENTERS = np.array([[0.0] * 6, [40.0] + [0.0] * 5, [0.0, 40.0] + [0.0] * 4])


def blobs(n_per: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + rng.normal(size=(n_per, 6)) for c in CENTERS])
    return x.astype(np.float32), np.repeat(np.arange(len(CENTERS)), n_per)


def features_for(ids: list[str], seed: int = 1) -> dict[str, np.ndarray]:
    x, _ = blobs((len(ids) + 2) // 3, seed)
    return {i: x[k] for k, i in enumerate(ids)}


def same_partition(a, b) -> None:
    assert a.keys == b.keys
    assert a.prototypes.dtype == b.prototypes.dtype == np.float32
    assert a.prototypes.tobytes() == b.prototypes.tobytes()
    assert a.members == b.members
    assert a.sample == b.sample


# ---- clustering_sample ------------------------------------------------------------------


def test_sample_is_deletion_stable():
    old = clustering_sample(IDS, seed=3, size=20)
    assert len(old) == 20 and len(set(old)) == 20
    full_order = clustering_sample(IDS, seed=3, size=len(IDS))
    assert full_order[:20] == old
    for x in [old[0], old[7], old[-1]]:
        reduced = [i for i in IDS if i != x]
        new = clustering_sample(reduced, seed=3, size=20)
        assert new == [i for i in old if i != x] + [full_order[20]]
    outside = full_order[40]
    assert clustering_sample([i for i in IDS if i != outside], seed=3, size=20) == old


def test_sample_ignores_input_order_and_depends_on_seed():
    shuffled = IDS[:]
    random.Random(5).shuffle(shuffled)
    assert clustering_sample(shuffled, 3, 20) == clustering_sample(IDS, 3, 20)
    assert clustering_sample(IDS, 4, 20) != clustering_sample(IDS, 3, 20)
    assert clustering_sample(IDS, 3, 500) == clustering_sample(IDS, 3, len(IDS))
    assert sorted(clustering_sample(IDS, 3, 500)) == IDS


# ---- hac_labels / merge_heights ----------------------------------------------------------


def test_hac_threshold_recovers_blobs():
    x, truth = blobs(15)
    labels = hac_labels(x, distance_threshold=10.0, n_clusters=None)
    assert labels.dtype == np.int64
    assert sorted(set(labels.tolist())) == [0, 1, 2]
    for b in range(3):
        assert len(set(labels[truth == b].tolist())) == 1
    assert len({labels[truth == b][0] for b in range(3)}) == 3


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_hac_n_clusters_is_an_upper_bound(k):
    x, _ = blobs(10)
    labels = hac_labels(x, distance_threshold=None, n_clusters=k)
    assert len(set(labels.tolist())) == k
    assert labels.min() == 0 and labels.max() == k - 1


def test_hac_single_point():
    labels = hac_labels(np.ones((1, 4), np.float32), distance_threshold=1.0, n_clusters=None)
    assert labels.tolist() == [0]
    assert hac_labels(np.ones((1, 4)), None, 3).tolist() == [0]


def test_merge_heights_count_clusters():
    x = np.random.default_rng(2).normal(size=(25, 3))
    h = merge_heights(x)
    assert h.shape == (24,)
    assert np.all(np.diff(h) >= 0)
    for t in [h[0] / 2, *((h[:-1] + h[1:]) / 2)[::4], h[-1] * 2]:
        n = len(set(hac_labels(x, distance_threshold=t, n_clusters=None).tolist()))
        assert n == 1 + int(np.sum(h > t))
    assert merge_heights(x[:1]).shape == (0,)


# ---- nearest -----------------------------------------------------------------------------


def test_nearest_ties_go_to_lowest_index():
    protos = np.array([[10.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.0, 1.0]])
    assert nearest(np.zeros((1, 2)), protos).tolist() == [1]
    assert nearest(np.array([0.0, 1.0]), protos).tolist() == [1]
    assert nearest(np.array([[1.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 0.0]])).tolist() == [0]


def test_nearest_row_independent_and_matches_brute_force():
    rng = np.random.default_rng(7)
    f = rng.normal(size=(300, 16)).astype(np.float32)
    p = rng.normal(size=(9, 16)).astype(np.float32)
    block = nearest(f, p)
    assert block.dtype == np.int64
    one_by_one = np.array([nearest(f[i : i + 1], p)[0] for i in range(len(f))])
    assert np.array_equal(block, one_by_one)
    assert np.array_equal(nearest(f, p, chunk=7), block)
    assert np.array_equal(nearest(f[::-1], p), block[::-1])
    d = ((f[:, None, :].astype(np.float64) - p[None].astype(np.float64)) ** 2).sum(-1)
    assert np.array_equal(block, d.argmin(1))
    assert len(set(block.tolist())) > 3


# ---- build_partition / remove_members ----------------------------------------------------

ARGS = {"seed": 11, "sample_size": 24, "distance_threshold": 10.0, "n_clusters": None}


def test_partition_is_canonical():
    feats = features_for(IDS)
    a = build_partition(IDS, feats, **ARGS)
    shuffled = IDS[:]
    random.Random(1).shuffle(shuffled)
    feats2 = {i: feats[i] for i in reversed(shuffled)}
    same_partition(build_partition(shuffled, feats2, **ARGS), a)
    assert list(a.keys) == sorted(a.keys)
    assert len(a.keys) == 3
    assert a.prototypes.shape == (3, 6)


def test_partition_structure():
    feats = features_for(IDS)
    part = build_partition(IDS, feats, **ARGS)
    sample = clustering_sample(IDS, ARGS["seed"], ARGS["sample_size"])
    assert part.sample == frozenset(sample)
    everyone = [i for m in part.members for i in m]
    assert sorted(everyone) == IDS
    assert all(list(m) == sorted(m) for m in part.members)
    assert part.cluster_of() == {i: k for k, m in enumerate(part.members) for i in m}
    labels = hac_labels(np.stack([feats[i] for i in sample]), ARGS["distance_threshold"], None)
    of = part.cluster_of()
    for a, la in zip(sample, labels, strict=True):
        for b, lb in zip(sample, labels, strict=True):
            assert (of[a] == of[b]) == (la == lb)
    for k, m in enumerate(part.members):
        in_sample = [i for i in sample if i in m]
        assert part.keys[k] == cluster_key(in_sample)
        mean = np.stack([feats[i] for i in in_sample]).astype(np.float64).mean(0)
        assert mean.astype(np.float32).tobytes() == part.prototypes[k].tobytes()
    rest = [i for i in IDS if i not in part.sample]
    routed = nearest(np.stack([feats[i] for i in rest]), part.prototypes)
    assert [of[i] for i in rest] == routed.tolist()


def test_partition_n_clusters_and_empty():
    feats = features_for(IDS)
    part = build_partition(IDS, feats, 11, 24, None, 2)
    assert len(part.keys) == 2
    with pytest.raises(ValueError, match="no training samples"):
        build_partition([], feats, **ARGS)


def test_remove_members_keeps_keys_and_prototypes():
    part = build_partition(IDS, features_for(IDS), **ARGS)
    gone = {i for i in IDS if i not in part.sample}
    gone = set(sorted(gone)[:5])
    after = remove_members(part, gone)
    assert after.keys == part.keys
    assert after.prototypes.tobytes() == part.prototypes.tobytes()
    assert after.sample == part.sample
    assert sorted(i for m in after.members for i in m) == sorted(set(IDS) - gone)
    for old, new in zip(part.members, after.members, strict=True):
        assert new == tuple(i for i in old if i not in gone)
    with pytest.raises(ValueError, match="reclustering"):
        remove_members(part, {sorted(part.sample)[0]})


def test_exactness_in_miniature():
    feats = features_for(IDS)
    full = build_partition(IDS, feats, **ARGS)
    outside = sorted(i for i in IDS if i not in full.sample)
    for x in outside[:6]:
        fresh = build_partition([i for i in IDS if i != x], feats, **ARGS)
        same_partition(fresh, remove_members(full, {x}))


# ---- ids ---------------------------------------------------------------------------------


def test_member_seed():
    s = member_seed(0, ["a", "b", "c"])
    assert isinstance(s, int) and 0 <= s < 16**15
    assert member_seed(0, ["c", "a", "b"]) == s
    assert member_seed(0, iter(["b", "c", "a"])) == s
    assert member_seed(0, ["a", "b"]) != s
    assert member_seed(0, ["a", "b", "c", "d"]) != s
    assert member_seed(1, ["a", "b", "c"]) != s


def test_private_and_cluster_keys():
    k1 = private_key(b"secret-1", "sample", "s001")
    assert len(k1) == 40
    assert private_key(b"secret-1", "sample", "s001") == k1
    assert private_key(b"secret-2", "sample", "s001") != k1
    assert private_key(b"secret-1", "subject", "s001") != k1
    assert private_key(b"secret-1", "sample", "s002") != k1
    c = cluster_key(["x", "y", "z"])
    assert c.startswith("c") and len(c) == 16
    assert cluster_key(("z", "x", "y")) == c
    assert cluster_key(["x", "y"]) != c


# ---- routing by neighbors -----------------------------------------------------------------


def test_vote_takes_the_majority_of_the_nearest_points():
    points = np.array([[0.0, 0], [0.1, 0], [0.2, 0], [5.0, 0], [5.1, 0]], dtype=np.float32)
    owner = np.array([0, 0, 0, 1, 1])
    # Nearest point is cluster 1's, but 2 of the 3 nearest vote for cluster 0.
    q = np.array([[2.4, 0.0], [4.0, 0.0], [0.0, 1.0]])
    assert vote(q, points, owner, 1).tolist() == [0, 1, 0]
    assert vote(q, points, owner, 3).tolist() == [0, 1, 0]
    assert vote(np.array([[3.0, 0.0]]), points, owner, 3).tolist() == [1]
    assert vote(np.array([[3.0, 0.0]]), points, owner, 5).tolist() == [0]


def test_vote_ties_go_to_the_nearest_voter_and_equal_distances_to_the_lower_point():
    points = np.array([[0.0], [3.0], [10.0]], dtype=np.float32)
    owner = np.array([1, 0, 2])
    # k=2: one vote each for clusters 1 and 0; cluster 0's voter is nearer.
    assert vote(np.array([[2.0]]), points, owner, 2).tolist() == [0]
    # Equidistant from points 0 and 1: point 0 (cluster 1) is first.
    assert vote(np.array([[1.5]]), points, owner, 1).tolist() == [1]
    assert vote(np.array([[1.5]]), points[::-1].copy(), owner[::-1].copy(), 1).tolist() == [0]


def test_vote_is_per_row_and_respects_allowed_clusters():
    x, labels = blobs(20)
    rng = np.random.default_rng(3)
    queries = x[rng.permutation(len(x))[:25]] + rng.normal(size=(25, 6)).astype(np.float32)
    together = vote(queries, x, labels, 5)
    alone = [int(vote(queries[i : i + 1], x, labels, 5)[0]) for i in range(len(queries))]
    assert together.tolist() == alone
    assert set(vote(queries, x, labels, 5, allowed=[0, 2]).tolist()) <= {0, 2}
    with pytest.raises(ValueError, match="no routing points"):
        vote(queries, x, labels, 5, allowed=[])


def test_routing_without_points_is_the_nearest_prototype():
    x, _ = blobs(10)
    r = Routing(CENTERS.astype(np.float32))
    assert r.route(x).tolist() == nearest(x, CENTERS).tolist()
    # Blob 1's points (rows 10-19): cluster 1 when it is allowed, else the origin's cluster 0.
    assert r.route(x[10:20], allowed=[2, 1]).tolist() == [1] * 10
    assert r.route(x[10:20], allowed=[0, 2]).tolist() == [0] * 10


def test_routing_points_are_members_and_the_cap_is_deletion_stable():
    ids = IDS[:60]
    feats = features_for(ids)
    part = build_partition(ids, feats, 0, 30, None, 3)
    points, owner = routing_points(part, feats, 0, None)
    assert len(points) == len(ids) and points.dtype == np.float32
    for k, members in enumerate(part.members):
        want = np.stack([feats[i] for i in members]).astype(np.float32)
        assert points[owner == k].tobytes() == want.tobytes()
    capped, cowner = routing_points(part, feats, 0, 4)
    assert np.bincount(cowner).tolist() == [min(4, len(m)) for m in part.members]
    # Forgetting a member that is not a routing point changes no routing point.
    chosen = {points_row.tobytes() for points_row in capped}
    victim = next(
        i
        for m in part.members
        for i in m
        if i not in part.sample and feats[i].astype(np.float32).tobytes() not in chosen
    )
    again, _ = routing_points(remove_members(part, {victim}), feats, 0, 4)
    assert again.tobytes() == capped.tobytes()
