"""Packed multi-cluster training equals training each cluster alone.

Real pretrained Lite0 on CPU. Clusters of different sizes make the small ones finish early,
so the packs also check that a finished cluster gets no further update (no momentum, no weight
decay). Deterministic mode must be bitwise; packed mode (one backbone pass for the whole pack)
equal up to float rounding, within the tolerance stated below.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from eraserd.config import AugmentConfig, PromptConfig, TrainingConfig
from eraserd.executor import RetuneJob, plan_packs
from eraserd.materialize import train_fingerprint
from eraserd.training.engine import ClusterData, train_pack

TRAIN = TrainingConfig(
    epochs=2,
    batch_size=8,
    weight_decay=1e-3,
    augment=AugmentConfig(crop_padding=2, hflip=True),
)
PROMPT = PromptConfig(width=4)

# Packed mode: the same sums in a different batch; measured differences are ~1e-8 on
# parameters of size ~5e-2 after 2 epochs. Anything near a real error (wrong normalisation,
# a stray update) moves parameters by 1e-3 or more.
PACKED_ATOL = 1e-6


def cluster(n: int, seed: int) -> ClusterData:
    g = torch.Generator().manual_seed(seed)
    return ClusterData(
        torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, 3, (n,), generator=g),
        seed,
    )


@pytest.fixture(scope="module")
def clusters():
    return {"big": cluster(29, 1), "small": cluster(5, 2), "mid": cluster(16, 3)}


@pytest.fixture(scope="module")
def solo(lite0_32, clusters):
    return {k: train_pack(lite0_32, [c], TRAIN, PROMPT, 3)[0] for k, c in clusters.items()}


def params(r):
    return (r.prompt, r.weight, r.bias)


def count_backbone_calls(backbone):
    calls = []
    handle = backbone.trainer.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls, handle


def test_deterministic_pack_is_bitwise_solo_whatever_the_companions(lite0_32, clusters, solo):
    for names in (["big", "small", "mid"], ["mid", "big"], ["small", "big"]):
        calls, handle = count_backbone_calls(lite0_32)
        try:
            out = train_pack(lite0_32, [clusters[n] for n in names], TRAIN, PROMPT, 3)
        finally:
            handle.remove()
        for name, r in zip(names, out):
            assert r.steps == solo[name].steps
            for a, b in zip(params(r), params(solo[name])):
                assert torch.equal(a, b), f"{name} changed when packed with {names}"
        assert max(calls) <= TRAIN.batch_size, "deterministic mode passes clusters one by one"


def test_packed_mode_is_one_pass_per_step_and_equals_solo(lite0_32, clusters, solo):
    fast = dataclasses.replace(lite0_32, deterministic=False)
    for names in (["big", "small", "mid"], ["mid", "big"]):
        calls, handle = count_backbone_calls(fast)
        try:
            out = train_pack(fast, [clusters[n] for n in names], TRAIN, PROMPT, 3)
        finally:
            handle.remove()
        assert len(calls) == max(solo[n].steps for n in names), "one backbone pass per step"
        assert max(calls) > TRAIN.batch_size, "clusters share a pass"
        for name, r in zip(names, out):
            for a, b in zip(params(r), params(solo[name])):
                torch.testing.assert_close(a, b, rtol=0, atol=PACKED_ATOL)


def test_a_finished_cluster_gets_no_more_updates(lite0_32, clusters, solo):
    """'small' has 2 steps, 'big' 8: had the pack kept stepping 'small' (momentum or weight
    decay on a zero gradient), its parameters would drift from solo's."""
    out = train_pack(lite0_32, [clusters["small"], clusters["big"]], TRAIN, PROMPT, 3)
    assert solo["small"].steps == 2 and solo["big"].steps == 8
    for a, b in zip(params(out[0]), params(solo["small"])):
        assert torch.equal(a, b)


def test_a_one_image_batch_trains_the_same_every_time(lite0_32):
    """17 images in batches of 8 end every epoch in a one-image step, whose CPU convolution
    backward alone is not reproducible; the engine must still be bitwise repeatable."""
    data = cluster(17, 4)
    runs = [params(train_pack(lite0_32, [data], TRAIN, PROMPT, 3)[0]) for _ in range(4)]
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


def test_an_empty_cluster_is_refused(lite0_32, clusters):
    empty = ClusterData(torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0), 1)
    with pytest.raises(ValueError, match="empty cluster"):
        train_pack(lite0_32, [clusters["small"], empty], TRAIN, PROMPT, 3)
    with pytest.raises(ValueError, match="at least one cluster"):
        train_pack(lite0_32, [], TRAIN, PROMPT, 3)


def job(key: str, cost: float) -> RetuneJob:
    return RetuneJob(key, cost, 3, lambda: None)


def test_packs_are_bounded_balanced_and_deterministic():
    jobs = [job(f"c{i:02d}", float(c)) for i, c in enumerate([90, 50, 40, 30, 10, 5, 5, 1])]
    packs = plan_packs(jobs, limit=3, workers=2)
    assert sorted(j.key for p in packs for j in p.jobs) == sorted(j.key for j in jobs)
    assert all(len(p.jobs) <= 3 for p in packs) and len(packs) == 3
    assert [p.cost for p in packs] == sorted((p.cost for p in packs), reverse=True)
    assert max(p.cost for p in packs) <= 95  # LPT: the 90 is not stacked on the 50
    assert plan_packs(list(reversed(jobs)), 3, 2) == packs
    # one pack per worker while there are jobs enough; one cluster per pack at limit 1
    assert len(plan_packs(jobs[:2], 64, 4)) == 2
    assert all(len(p.jobs) == 1 for p in plan_packs(jobs, 1, 2))
    assert plan_packs([], 4, 2) == []


def test_train_fingerprint_names_the_device_kind(make_config, lite0_32):
    cfg = make_config("fp")
    cpu = train_fingerprint(cfg, lite0_32, ["0", "1"], "cpu")
    assert cpu == train_fingerprint(cfg, lite0_32, ["0", "1"], "cpu")
    assert cpu != train_fingerprint(cfg, lite0_32, ["0", "1"], "cuda")


def registry_view(er) -> dict:
    m = er.registry.load()
    return {c.key: (c.prompt, c.head) for c in m.clusters}


@pytest.mark.slow
def test_builds_through_packs_equal_one_cluster_jobs_and_verify_needs_determinism(
    make_config, lite0_32
):
    """End to end through the builder and executor: 4 clusters in one pack give the same
    registry blobs as one job per cluster; a packed-mode model cannot be verified bitwise."""
    from eraserd import checks
    from eraserd.eraser import Eraser
    from eraserd.errors import ConfigError

    views = []
    for i, pack in enumerate((1, 4)):
        cfg = make_config(f"p{i}", executor={"backend": "inline", "pack_clusters": pack})
        with Eraser(cfg, backbone=lite0_32) as er:
            er.build()
            views.append(registry_view(er))
    assert views[0] == views[1] and len(views[0]) == 4

    cfg = make_config(
        "fast",
        executor={"backend": "inline", "pack_clusters": 4},
        runtime={"deterministic": False},
    )
    with Eraser(cfg) as er:
        er.build()
        assert sorted(registry_view(er)) == sorted(views[0])  # the same clusters
        with pytest.raises(ConfigError, match="deterministic"):
            checks.verify(er)
