"""Routing features are computed in batches, yet each is a function of its own image only:
the same bits alone, in any company and at any position; and a run that dies resumes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from eraserd.eraser import Eraser
from eraserd.model import features as features_mod
from eraserd.model.features import ensure_features


def digit_views(n: int, size: int, offset: int = 0) -> torch.Tensor:
    images = load_digits().images[offset : offset + n]
    gray = torch.tensor(np.rint(images * (255.0 / 16.0)).astype(np.uint8))
    rgb = gray[:, None].expand(-1, 3, -1, -1).float()
    return torch.nn.functional.interpolate(rgb, size=(size, size)).round().to(torch.uint8)


def test_a_feature_is_the_same_bits_alone_in_any_company_and_at_any_position(lite0_32):
    b = lite0_32.feature_batch
    assert b > 1, "the test needs passes that hold several images"
    views = digit_views(2 * b + 5, lite0_32.image_size)  # a padded last pass
    shapes = []
    hook = lite0_32.trainer.register_forward_pre_hook(lambda m, a: shapes.append(a[0].shape))
    try:
        together = lite0_32.features(views)
    finally:
        hook.remove()
    assert {tuple(s) for s in shapes} == {(b, 3, lite0_32.image_size, lite0_32.image_size)}
    assert len(shapes) == 3

    alone = np.stack([lite0_32.feature(v) for v in views[:7]])
    assert np.array_equal(alone, together[:7])

    perm = torch.randperm(len(views), generator=torch.Generator().manual_seed(3))
    shuffled = lite0_32.features(views[perm])
    assert np.array_equal(shuffled, together[perm.numpy()])

    # Other company: the first few images beside images the first run never saw.
    strangers = digit_views(b - 1, lite0_32.image_size, offset=500)
    mixed = lite0_32.features(torch.cat([strangers[:3], views[:4], strangers[3:]]))
    assert np.array_equal(mixed[3:7], together[:4])
    assert together.dtype == np.float32 and together.shape == (len(views), lite0_32.num_features)


def test_the_one_pass_shape_matters_so_it_is_part_of_the_cache_key(lite0_32):
    """A batch of one can differ from a padded pass in the last bits (it does on AVX-512
    CPUs: oneDNN picks kernels by shape). The pass shape is what makes features
    batch-invariant, so changing it changes the cache key, and only the last bits move."""
    views = digit_views(lite0_32.feature_batch, lite0_32.image_size)
    single = copy.copy(lite0_32)
    single.feature_batch = 1
    ones = np.stack([single.features(v[None])[0] for v in views])
    batched = lite0_32.features(views)
    np.testing.assert_allclose(ones, batched, rtol=0, atol=1e-3)
    assert f"feature_batch={lite0_32.feature_batch}" in lite0_32.numerics


def test_feature_extraction_resumes_after_a_crash_from_its_last_chunk(
    make_config, lite0_32, monkeypatch
):
    monkeypatch.setattr(features_mod, "CHUNK", 2 * lite0_32.feature_batch)
    chunk = 2 * lite0_32.feature_batch
    cfg = make_config("feat")
    with Eraser(cfg, backbone=lite0_32) as er:
        er.ingest()
        rows = sorted(er.store.rows("train"), key=lambda r: r.sample_id)[: 3 * chunk + 3]
        crashing = copy.copy(lite0_32)
        calls = []

        def dies_on_the_second_chunk(images):
            calls.append(len(images))
            if len(calls) == 2:
                raise MemoryError("killed mid-extraction")
            return lite0_32.features(images)

        crashing.features = dies_on_the_second_chunk  # type: ignore[method-assign]
        with pytest.raises(MemoryError):
            ensure_features(er.store, crashing, rows)
        cached = er.store.cached_features([r.key for r in rows], lite0_32.feature_key)
        assert set(cached) == {r.key for r in rows[:chunk]}

        counted = copy.copy(lite0_32)
        resumed = []
        counted.features = lambda images: (  # type: ignore[method-assign]
            resumed.append(len(images)) or lite0_32.features(images)
        )
        feats = ensure_features(er.store, counted, rows)
        assert sum(resumed) == len(rows) - chunk
        fresh = lite0_32.features(
            torch.stack([features_mod.canonical_view(er.store.read_object(r), 32) for r in rows])
        )
        assert np.array_equal(np.stack([feats[r.sample_id] for r in rows]), fresh)
