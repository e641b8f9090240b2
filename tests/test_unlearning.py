"""The pure unlearning decision (``eraserd/unlearning.py``): property tests over random data,
clustering settings and deletion sets, each against a from-scratch partition of what is left.
No torch, no store: these run in about a second."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eraserd.cost import Rule
from eraserd.unlearning import Settings, decide, matching

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`


def dataset(seed: int, n: int, dim: int = 6, blobs: int = 4) -> dict[str, np.ndarray]:
    """``n`` points around ``blobs`` centres: ids ``x000``.. -> float32 features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, size=(blobs, dim))
    pts = centres[rng.integers(0, blobs, n)] + rng.normal(0, 1, size=(n, dim))
    return {f"x{i:03d}": pts[i].astype(np.float32) for i in range(n)}


def same(a, b) -> bool:
    return (
        a.keys == b.keys
        and a.members == b.members
        and a.sample == b.sample
        and a.prototypes.tobytes() == b.prototypes.tobytes()
    )


RULES = st.sampled_from(
    [
        Rule(None, 3),
        Rule(None, 5, max_share=0.5),
        Rule(4.0, None),
        Rule(6.0, None, max_share=0.4, min_points=2),
    ]
)


@settings(max_examples=60, deadline=None)
@given(
    data_seed=st.integers(0, 10_000),
    seed=st.integers(0, 3),
    n=st.integers(12, 60),
    sample_size=st.integers(6, 20),
    rule=RULES,
    picks=st.lists(st.integers(0, 10_000), min_size=1, max_size=6),
)
def test_a_decision_gives_the_partition_a_fresh_build_gives(
    data_seed, seed, n, sample_size, rule, picks
):
    feats = dataset(data_seed, n)
    ids = sorted(feats)
    s = Settings(seed, sample_size, rule)
    current = s.partition(ids, feats)
    deleted = sorted({ids[p % n] for p in picks})
    if len(deleted) == n:
        deleted = deleted[1:]
    d = decide(current, deleted, s, feats)
    fresh = s.partition(sorted(set(ids) - set(deleted)), feats)
    assert same(d.partition, fresh)
    assert d.gone == frozenset(deleted)
    assert d.recluster == bool(set(deleted) & current.sample)
    where = current.cluster_of()
    assert d.affected == tuple(sorted({current.keys[where[i]] for i in deleted}))
    # Reused clusters have exactly their old members; the rest are retrained.
    for new, old in d.reuse.items():
        k, j = d.partition.keys.index(new), current.keys.index(old)
        assert d.partition.members[k] == current.members[j]
    assert set(d.retrain) | set(d.reuse) == set(d.partition.keys)
    assert not set(d.retrain) & set(d.reuse)
    if not d.recluster:
        # Same clusters, same keys: exactly the clusters that lost a member are retrained.
        assert d.partition.keys == current.keys and set(d.retrain) == set(d.affected)
        assert d.reuse == {k: k for k in current.keys if k not in d.affected}
    assert d.retrained_samples == sum(
        len(m) for k, m in zip(d.partition.keys, d.partition.members) if k in d.retrain
    )


def test_deleting_outside_the_clustering_sample_keeps_prototypes_and_needs_no_features():
    feats = dataset(1, 40)
    s = Settings(0, 10, Rule(None, 4))
    current = s.partition(sorted(feats), feats)
    outside = sorted(set(feats) - current.sample)[:3]
    d = decide(current, outside, s)  # no features: not needed
    assert not d.recluster and d.reason is None
    assert d.partition.prototypes is current.prototypes
    inside = sorted(current.sample)[0]
    with pytest.raises(ValueError, match="clustering sample"):
        decide(current, [inside], s)
    assert decide(current, [inside], s, feats).reason == "clustering sample"


def test_changed_settings_recluster_and_changed_training_reuses_nothing():
    feats = dataset(2, 40)
    s = Settings(0, 10, Rule(None, 4))
    current = s.partition(sorted(feats), feats)
    outside = sorted(set(feats) - current.sample)[0]
    d = decide(current, [outside], s, feats, clustering_changed=True)
    assert d.recluster and d.reason == "clustering settings"
    # Unchanged settings recluster to the same partition: all but one cluster is reused.
    assert len(d.reuse) == len(current.keys) - 1
    d = decide(current, [outside], s, feats, training_changed=True)
    assert not d.reuse and d.retrain == d.partition.keys


def test_ids_that_are_no_training_member_change_nothing():
    feats = dataset(3, 30)
    s = Settings(0, 10, Rule(None, 3))
    current = s.partition(sorted(feats), feats)
    d = decide(current, ["held-out", "already-gone"], s)
    assert not d.gone and not d.affected and not d.retrain and not d.recluster
    assert same(d.partition, current) and d.reuse == {k: k for k in current.keys}
    with pytest.raises(ValueError, match="no training sample would be left"):
        decide(current, sorted(feats), s, feats)


def test_matching_is_by_member_set_not_by_key():
    feats = dataset(4, 30)
    s = Settings(0, 10, Rule(None, 3))
    a = s.partition(sorted(feats), feats)
    b = Settings(1, 10, Rule(None, 3)).partition(sorted(feats), feats)  # another sample
    for new, old in matching(a, b).items():
        assert b.members[b.keys.index(new)] == a.members[a.keys.index(old)]
    assert matching(a, a) == {k: k for k in a.keys}


def test_the_core_imports_neither_torch_sqlite_nor_the_registry():
    code = (
        "import sys, eraserd.unlearning; "
        "print(sorted(m for m in ('torch', 'sqlite3', 'eraserd.registry') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
