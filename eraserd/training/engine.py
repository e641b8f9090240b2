"""Per-cluster prompt and head tuning. Knows nothing of stores, registries or daemons.

A cluster's result is a pure function of (its images and labels, its seed, the config, the
backbone): one ``torch.Generator`` seeded from the cluster's own membership drives every random
draw (initialisation, shuffling, augmentation) in a fixed order, and the loss is averaged over
that cluster's own batch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import PromptConfig, RuntimeConfig, TrainingConfig
from ..model.backbone import Backbone
from ..model.prompt import apply_prompt, border_mask


@dataclass(frozen=True)
class ClusterData:
    images: torch.Tensor
    """uint8 [n, 3, S, S] canonical views, in sample-id order."""
    labels: torch.Tensor
    """int64 [n]."""
    seed: int


@dataclass(frozen=True)
class TrainedCluster:
    prompt: torch.Tensor  # float32 [3, S, S], zero inside the border
    weight: torch.Tensor  # float32 [C, F]
    bias: torch.Tensor  # float32 [C]
    steps: int
    seconds: float


def configure_torch(runtime: RuntimeConfig) -> None:
    """Fix the knobs that change floating-point results: thread count and algorithm choice."""
    torch.set_num_threads(runtime.num_threads)
    if runtime.deterministic:
        # cuBLAS is deterministic only with a fixed workspace; must be set before first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 (per optimisation step)."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / span))


def augment(images: torch.Tensor, gen: torch.Generator, padding: int, hflip: bool) -> torch.Tensor:
    """Random translation (zero padding, then crop) and optional horizontal flip."""
    n, _, h, w = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=gen) if padding else None
    flips = torch.rand(n, generator=gen) < 0.5 if hflip else None
    out = images
    if padding:
        padded = F.pad(images, (padding, padding, padding, padding))
        out = torch.stack(
            [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())]
        )
    if flips is not None and bool(flips.any()):
        out = out.clone()
        out[flips] = out[flips].flip(-1)
    return out


def _init_params(
    gen: torch.Generator,
    size: int,
    num_classes: int,
    num_features: int,
    pcfg: PromptConfig,
    mask: torch.Tensor,
):
    prompt = torch.randn(3, size, size, generator=gen) * pcfg.init_std * mask[0].cpu()
    bound = 1.0 / math.sqrt(num_features)
    weight = (torch.rand(num_classes, num_features, generator=gen) * 2 - 1) * bound
    bias = (torch.rand(num_classes, generator=gen) * 2 - 1) * bound
    return prompt, weight, bias


def train_cluster(
    backbone: Backbone,
    data: ClusterData,
    tcfg: TrainingConfig,
    pcfg: PromptConfig,
    num_classes: int,
    on_step: Callable[[int], None] | None = None,
) -> TrainedCluster:
    start = time.perf_counter()
    device = backbone.device
    n, size = data.images.shape[0], backbone.image_size
    if n == 0:
        raise ValueError("cannot train an empty cluster")
    gen = torch.Generator().manual_seed(data.seed)
    mask = border_mask(size, pcfg.width, device)
    p0, w0, b0 = _init_params(gen, size, num_classes, backbone.num_features, pcfg, mask)
    prompt = p0.to(device).requires_grad_(True)
    weight = w0.to(device).requires_grad_(True)
    bias = b0.to(device).requires_grad_(True)
    opt = torch.optim.SGD(
        [
            {"params": [prompt], "lr": tcfg.prompt_lr, "base_lr": tcfg.prompt_lr},
            {"params": [weight, bias], "lr": tcfg.head_lr, "base_lr": tcfg.head_lr},
        ],
        momentum=tcfg.momentum,
        weight_decay=tcfg.weight_decay,
    )
    per_epoch = math.ceil(n / tcfg.batch_size)
    total = per_epoch * tcfg.epochs
    warmup = round(per_epoch * tcfg.warmup_epochs)
    labels = data.labels.to(device)
    step = 0
    for _ in range(tcfg.epochs):
        order = torch.randperm(n, generator=gen)
        for lo in range(0, n, tcfg.batch_size):
            idx = order[lo : lo + tcfg.batch_size]
            views = augment(data.images[idx], gen, tcfg.augment.crop_padding, tcfg.augment.hflip)
            x = apply_prompt(backbone.normalize(views), prompt, mask)
            logits = F.linear(backbone.model(x), weight, bias)
            loss = F.cross_entropy(logits, labels[idx.to(device)])
            factor = lr_factor(step, total, warmup)
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if on_step is not None:
                on_step(len(idx))
    with torch.no_grad():
        final_prompt = (prompt * mask[0]).detach().cpu().contiguous()
    return TrainedCluster(
        final_prompt,
        weight.detach().cpu().contiguous(),
        bias.detach().cpu().contiguous(),
        step,
        time.perf_counter() - start,
    )


@torch.no_grad()
def predict_batch(
    backbone: Backbone,
    prompt: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    images: torch.Tensor,
    batch_size: int = 64,
) -> torch.Tensor:
    """Predicted class indices of canonical views under one cluster's prompt and head."""
    device = backbone.device
    prompt, weight, bias = prompt.to(device), weight.to(device), bias.to(device)
    out = []
    for lo in range(0, images.shape[0], batch_size):
        x = backbone.normalize(images[lo : lo + batch_size]) + prompt
        out.append(F.linear(backbone.model(x), weight, bias).argmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)
