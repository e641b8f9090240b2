"""The frozen backbone as the retune engine runs it: BatchNorm folded, best memory format.

The backbone never changes, so every eval-mode BatchNorm that directly follows a convolution
can be folded into that convolution's weights and bias. That removes the BatchNorm forward
and backward passes (about a quarter of a CPU training step on EfficientNet-Lite0) without
changing the function, up to float rounding. The folded copy is checked against the original
on a seeded input and discarded if they disagree, so an architecture whose module order does
not match its data flow falls back to the plain copy instead of training on a wrong network.
"""

from __future__ import annotations

import copy
import logging
from typing import cast

import torch
from torch import nn

log = logging.getLogger("eraserd.model")

FASTPATH_VERSION = "fold-bn-1"
"""Changes whenever the prepared network's arithmetic changes: part of the train fingerprint."""


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    running_mean, running_var = bn.running_mean, bn.running_var
    # fold_batchnorm folds only a BatchNorm that tracks running stats: both are set.
    assert running_mean is not None and running_var is not None
    scale = bn.weight / torch.sqrt(running_var + bn.eps)
    # Conv2d keeps these as pairs; torch annotates the attributes as tuple[int, ...].
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        cast("tuple[int, int]", conv.kernel_size),
        cast("tuple[int, int]", conv.stride),
        cast("str | tuple[int, int]", conv.padding),
        cast("tuple[int, int]", conv.dilation),
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(conv.weight.device, conv.weight.dtype)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(running_mean)
    assert fused.bias is not None  # bias=True
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    fused.bias.copy_((bias - running_mean) * scale + bn.bias)
    return fused


def _bn_remainder(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of a BatchNorm once folded: timm's BatchNormAct2d keeps its drop and act."""
    rest = [getattr(bn, a) for a in ("drop", "act") if isinstance(getattr(bn, a, None), nn.Module)]
    return nn.Sequential(*rest) if rest else nn.Identity()


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold each eval BatchNorm2d registered right after a Conv2d into it, in place."""
    folded = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (cname, conv), (bname, bn) in zip(children, children[1:]):
            if (
                type(conv) is nn.Conv2d
                and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats
                and bn.affine
                and bn.num_features == conv.out_channels
            ):
                setattr(parent, cname, _fold_pair(conv, bn))
                setattr(parent, bname, _bn_remainder(bn))
                folded += 1
    return folded


def is_convnet(model: nn.Module) -> bool:
    """Channels-last pays off for stacks of convolutions, not for a ViT's single patch conv."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) >= 4


@torch.no_grad()
def prepare_train_model(model: nn.Module, image_size: int, device: torch.device) -> nn.Module:
    """A frozen copy of ``model`` for training: folded and, for conv nets, channels-last."""
    fast = copy.deepcopy(model)
    n = fold_batchnorm(fast)
    if n:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, image_size, image_size, generator=gen).to(device)
        ref, out = model(x), fast(x)
        err = float((ref - out).abs().max() / ref.abs().max().clamp_min(1e-6))
        if not err < 1e-3:
            log.warning(
                "BatchNorm folding changed the network; training on the unfolded backbone",
                extra={"fields": {"relative_error": err}},
            )
            fast = copy.deepcopy(model)
    for p in fast.parameters():
        p.requires_grad_(False)
    fast.eval()
    if is_convnet(fast):
        fast = fast.to(memory_format=torch.channels_last)
    return fast
