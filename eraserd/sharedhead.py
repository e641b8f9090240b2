"""The shared-head baseline of ``eraserd evaluate`` (paper, Fig. 9, "one classifier head"):
LMEraser's clusters, routing and prompts, with one linear head for all of them instead of
one per cluster.

How it is built, on a finished LMEraser build: every training sample's canonical view goes
through the backbone once with its own cluster's prompt, and one head is trained on those
features by the configured SGD (``training.head_lr``, momentum, weight decay, batch size,
warm-up and cosine schedule), from a seeded initial head and seeded batch orders, for as many
optimisation steps as LMEraser's heads take together (on features that stay fixed, fewer
leave it far from trained). An input is routed as LMEraser routes it, takes its cluster's prompt,
and the shared head answers.

What a deletion costs, honestly: its cluster's prompt is retrained as in LMEraser, and the
shared head depends on every training sample, so every deletion retrains the head on all of
them (one backbone pass per sample, then the head's steps). ``retrain_share`` is therefore
1.0, whatever the partition.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import TrainingConfig
from .eraser import Eraser
from .manifest import Manifest
from .materialize import load_views
from .model.features import ensure_features
from .model.predictor import Predictor
from .training.engine import lr_factor, prompted_features


def train_head(
    feats: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    seed: int,
    tcfg: TrainingConfig,
    steps: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One linear head on fixed features: a pure function of its inputs and ``seed``.

    The initial head is drawn as a cluster's is (uniform in ±1/sqrt(features)); then per
    epoch one seeded permutation, mini-batches of ``batch_size``, the mean cross-entropy,
    SGD with momentum and weight decay (PyTorch semantics) at ``head_lr`` times the
    warm-up and cosine factor of each step; ``epochs_for`` all of them, or as many epochs as
    ``steps`` optimisation steps take, if more.
    """
    n, dim = feats.shape
    if n == 0:
        raise ValueError("cannot train a head on no samples")
    # Centred features at unit overall scale train far better than raw ones, whose scale is
    # the backbone's (one scale for all dimensions: a dead feature is not blown up). The
    # transform is folded into the returned head, which applies to raw features.
    mean = feats.mean(0)
    std = float((feats - mean).std()) or 1.0
    feats = (feats - mean) / std
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(dim)
    weight = ((torch.rand(num_classes, dim, generator=gen) * 2 - 1) * bound).requires_grad_()
    bias = ((torch.rand(num_classes, generator=gen) * 2 - 1) * bound).requires_grad_()
    b = tcfg.batch_size
    per_epoch = math.ceil(n / b)
    epochs = max(tcfg.epochs_for(n), math.ceil(steps / per_epoch))
    total, warmup = per_epoch * epochs, round(per_epoch * tcfg.warmup_epochs)
    momentum: list[torch.Tensor] = []
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for lo in range(0, n, b):
            idx = order[lo : lo + b]
            loss = F.cross_entropy(F.linear(feats[idx], weight, bias), labels[idx])
            gw, gb = torch.autograd.grad(loss, (weight, bias))
            with torch.no_grad():
                grads = [gw + tcfg.weight_decay * weight, gb + tcfg.weight_decay * bias]
                if tcfg.momentum:
                    if not momentum:
                        momentum = [g.clone() for g in grads]
                    else:
                        for buf, g in zip(momentum, grads):
                            buf.mul_(tcfg.momentum).add_(g)
                    grads = momentum
                lr = tcfg.head_lr * lr_factor(step, total, warmup)
                weight.sub_(lr * grads[0])
                bias.sub_(lr * grads[1])
            step += 1
    weight, bias = weight.detach() / std, bias.detach()
    return weight, bias - weight @ mean


def shared_head_run(er: Eraser, seed: int) -> tuple[float, float]:
    """Train the shared head on ``er``'s published LMEraser build and score it on the
    held-out split: (accuracy, seconds the head took, its backbone passes included)."""
    t0 = time.perf_counter()
    m = er.registry.load()
    prompts = _prompts(er, m)
    by_key = {r.key: r for r in er.store.rows("train")}
    feats, labels = [], []
    for c, prompt in zip(m.clusters, prompts):
        members = er.registry.get_json(c.members, f"cluster {c.key} members")["members"]
        rows = sorted((by_key[k] for k in members), key=lambda r: r.sample_id)
        views = load_views(er.store, rows, er.backbone.image_size)
        feats.append(prompted_features(er.backbone, prompt, views))
        labels += [r.label for r in rows]
    t = er.cfg.training
    steps = sum(math.ceil(c.size / t.batch_size) * t.epochs_for(c.size) for c in m.clusters)
    head = train_head(torch.cat(feats), torch.tensor(labels), len(m.classes), seed, t, steps)
    seconds = time.perf_counter() - t0
    return routed_accuracy(er, m, [head] * len(m.clusters)), seconds


def routed_accuracy(
    er: Eraser, m: Manifest, heads: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> float:
    """Held-out accuracy of ``m``'s routing and prompts with ``heads`` (weight, bias), one
    per cluster position: each input is routed to a cluster, takes its prompt and that
    position's head."""
    test = er.store.rows("test")
    if not test:
        return 0.0
    routing = Predictor.load(er.registry, er.backbone, m.version).routing
    plain = ensure_features(er.store, er.backbone, test)
    routed = routing.route(np.stack([plain[r.sample_id] for r in test]))
    correct = 0
    for k, (prompt, (weight, bias)) in enumerate(zip(_prompts(er, m), heads)):
        mine = [r for r, to in zip(test, routed) if int(to) == k]
        if mine:
            views = load_views(er.store, mine, er.backbone.image_size)
            preds = F.linear(prompted_features(er.backbone, prompt, views), weight, bias)
            correct += int((preds.argmax(1) == torch.tensor([r.label for r in mine])).sum())
    return correct / len(test)


def _prompts(er: Eraser, m: Manifest) -> list[torch.Tensor]:
    return [
        er.registry.get_tensors(c.prompt, f"cluster {c.key} prompt")["prompt"] for c in m.clusters
    ]
