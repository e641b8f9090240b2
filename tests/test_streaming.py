"""A retrain reads its images where it trains, straight into the one padded buffer: the same
bits as the in-memory path, the same trained prompt and head, and no image in the parent."""

from __future__ import annotations

import pickle

import pytest
import torch

from eraserd.eraser import Eraser
from eraserd.executor.packing import Pack
from eraserd.materialize import cluster_source
from eraserd.training.engine import PackImages, train_pack
from eraserd.training.streaming import ClusterSource, read_pack


@pytest.fixture
def sources(make_config, lite0_32):
    cfg = make_config("stream")
    with Eraser(cfg, backbone=lite0_32) as er:
        er.ingest()
        rows = er.store.rows("train")
        yield (
            cfg,
            [
                cluster_source(er.store, rows[:20], 32, cfg.seed),
                cluster_source(er.store, rows[20:27], 32, cfg.seed + 1),
            ],
        )


@pytest.mark.parametrize("pad", [0, 2])
def test_read_pack_is_the_in_memory_pack_bit_for_bit(sources, pad):
    _, srcs = sources
    streamed = read_pack(srcs, pad)
    in_memory = PackImages.of([s.load() for s in srcs], pad)
    assert torch.equal(streamed.padded, in_memory.padded)
    assert torch.equal(streamed.labels, in_memory.labels)
    assert (
        (streamed.counts, streamed.seeds)
        == (in_memory.counts, in_memory.seeds)
        == (
            (20, 7),
            (srcs[0].seed, srcs[1].seed),
        )
    )
    assert streamed.padded.dtype == torch.uint8 and streamed.padded.shape[-1] == 32 + 2 * pad


def test_a_streamed_pack_trains_to_the_same_bits(sources, lite0_32):
    cfg, srcs = sources
    t, p = cfg.training, cfg.prompt
    streamed = train_pack(lite0_32, read_pack(srcs, t.augment.crop_padding), t, p, 10)
    in_memory = train_pack(lite0_32, [s.load() for s in srcs], t, p, 10)
    for a, b in zip(streamed, in_memory):
        assert torch.equal(a.prompt, b.prompt) and torch.equal(a.weight, b.weight)
        assert torch.equal(a.bias, b.bias) and a.steps == b.steps


def test_a_source_is_names_not_pixels_and_a_pack_offers_it(sources):
    """What the parent hands a local worker: keys and labels, a few bytes per sample."""
    _, srcs = sources
    wire = pickle.dumps(srcs)
    assert len(wire) < 120 * sum(len(s.keys) for s in srcs)  # a 32 px view alone is 3 KB
    assert pickle.loads(wire) == srcs
    from eraserd.executor import RetuneJob

    with_source = RetuneJob("a", 1.0, 10, srcs[0].load, srcs[0])
    without = RetuneJob("b", 1.0, 10, srcs[1].load)
    assert Pack((with_source,)).sources() == [srcs[0]]
    assert Pack((with_source, without)).sources() is None  # then images are shipped


def test_a_pack_of_mixed_view_sizes_is_refused(sources):
    _, srcs = sources
    other = ClusterSource(srcs[1].objects, srcs[1].keys, srcs[1].labels, srcs[1].seed, 48)
    with pytest.raises(ValueError, match="same view size"):
        read_pack([srcs[0], other], 2)
