"""The shared-head baseline (``sharedhead.py``): one head trained on fixed features is a
pure, seeded function of them; on a real small build, the routing and prompts it scores
with are LMEraser's own (with each cluster's own head in place of the shared one, the score
is the build's accuracy), and a shared head trained on every sample answers well."""

from __future__ import annotations

import torch

from eraserd.eraser import Eraser
from eraserd.sharedhead import routed_accuracy, shared_head_run, train_head


def _blobs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three separable Gaussian classes in 16 dimensions."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 16, generator=gen) * 4
    labels = torch.arange(90) % 3
    return centers[labels] + torch.randn(90, 16, generator=gen), labels


def test_train_head_is_a_seeded_pure_function_that_learns(make_config):
    tcfg = make_config().training
    feats, labels = _blobs(0)
    w1, b1 = train_head(feats, labels, 3, seed=5, tcfg=tcfg)
    w2, b2 = train_head(feats.clone(), labels.clone(), 3, seed=5, tcfg=tcfg)
    assert torch.equal(w1, w2) and torch.equal(b1, b2)
    w3, _ = train_head(feats, labels, 3, seed=6, tcfg=tcfg)
    assert not torch.equal(w1, w3)
    accuracy = ((feats @ w1.T + b1).argmax(1) == labels).double().mean()
    assert accuracy > 0.95
    assert w1.shape == (3, 16) and b1.shape == (3,)


def test_train_head_refuses_no_samples(make_config):
    import pytest

    with pytest.raises(ValueError, match="no samples"):
        train_head(
            torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 2, 0, make_config().training
        )


def test_shared_head_scores_with_lmeraser_routing_and_prompts(make_config, lite0_32):
    cfg = make_config(training={"min_steps": 80})
    with Eraser(cfg, backbone=lite0_32) as er:
        m = er.build()
        heads = []
        for c in m.clusters:
            head = er.registry.get_tensors(c.head, "head")
            heads.append((head["weight"], head["bias"]))
        # Each cluster's own head through this scorer's routing: the build's own accuracy.
        assert routed_accuracy(er, m, heads) == m.accuracy
        # One cluster's head everywhere scores differently: the heads do reach the answer.
        assert routed_accuracy(er, m, [heads[0]] * len(heads)) != m.accuracy
        accuracy, seconds = shared_head_run(er, seed=3)
        again, _ = shared_head_run(er, seed=3)
        assert accuracy == again and seconds > 0
        assert accuracy > 0.3, (accuracy, m.accuracy)  # ten classes: far above chance
