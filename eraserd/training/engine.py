"""The retune engine: many clusters' prompts and heads trained together on one device.

Each cluster's result is a pure function of (its images and labels, its seed, the config, the
backbone). A cluster keeps its own everything: one ``torch.Generator`` seeded from its own
membership draws, in a fixed order, its initial prompt and head, every epoch's order and every
crop and flip; its loss is averaged over its own micro-batch; its learning-rate schedule counts
its own steps; its SGD momentum buffer is its own. A cluster that has finished (or is absent
from a step) gets no update at all, not even a momentum or weight-decay step.

Two ways through the backbone (``runtime.deterministic``):

* **deterministic** (default): each cluster's micro-batch goes through the backbone on its
  own, exactly as if it were trained alone. CPU and GPU kernels are not batch-invariant (a
  sample's output can change in its last bits with the batch around it), so this is what
  makes a cluster's prompt and head bitwise independent of which clusters share its pack.
* **packed** (``deterministic: false``): the micro-batches of every active cluster are
  concatenated, sorted by cluster, and go through the backbone in one pass (bf16 autocast on
  CUDA); all heads are applied with one batched matmul. Mathematically identical to solo
  training, equal to it up to float rounding.

Everything random is drawn on the host up front, so the step loop never waits on the device:
images live on the device as uint8, and crops and flips are one gather there.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import PromptConfig, RuntimeConfig, TrainingConfig
from ..model.backbone import Backbone
from ..model.prompt import apply_prompt, border_mask

ENGINE_VERSION = "packed-2"
"""Changes whenever the engine's arithmetic changes: part of the train fingerprint."""


@dataclass(frozen=True)
class ClusterData:
    images: torch.Tensor
    """uint8 [n, 3, S, S] canonical views, in sample-id order."""
    labels: torch.Tensor
    """int64 [n]."""
    seed: int


@dataclass(frozen=True)
class PackImages:
    """A pack's images as training reads them: every cluster's views back to back, with the
    crop padding's zero border already around each. Built from in-memory ``ClusterData``
    (``of``), or read straight from the store into this one buffer (``training/streaming.py``), so
    a retrain holds its uint8 images once and nothing else that grows with them."""

    padded: torch.Tensor
    """uint8 [N, 3, S + 2p, S + 2p]."""
    labels: torch.Tensor
    """int64 [N]."""
    counts: tuple[int, ...]
    """Images of each cluster, in pack order."""
    seeds: tuple[int, ...]

    @classmethod
    def of(cls, datas: Sequence[ClusterData], pad: int) -> PackImages:
        images = torch.cat([d.images for d in datas])
        return cls(
            F.pad(images, (pad, pad, pad, pad)) if pad else images,
            torch.cat([d.labels for d in datas]),
            tuple(int(d.images.shape[0]) for d in datas),
            tuple(d.seed for d in datas),
        )


@dataclass(frozen=True)
class TrainedCluster:
    prompt: torch.Tensor  # float32 [3, S, S], zero inside the border
    weight: torch.Tensor  # float32 [C, F]
    bias: torch.Tensor  # float32 [C]
    steps: int
    seconds: float
    """The pack's wall time, shared out by image-steps."""


def configure_torch(runtime: RuntimeConfig) -> None:
    """Fix the knobs that change floating-point results: thread count and algorithm choice."""
    torch.set_num_threads(runtime.num_threads)
    if runtime.deterministic:
        # cuBLAS is deterministic only with a fixed workspace; must be set before first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        # With deterministic algorithms on, torch also NaN-fills every new tensor, a debugging
        # aid that cost 22% of a CPU training step. No kernel here reads memory it did not
        # write (the tests compare packed, solo and rebuilt models bit for bit).
        # A property of a module subclass that torch installs at import: invisible to mypy.
        torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
        torch.backends.cudnn.benchmark = False
        if runtime.device.startswith("cuda"):
            # FlashAttention's backward accumulates with atomics; the math and memory-efficient
            # kernels have deterministic backward passes.
            torch.backends.cuda.enable_flash_sdp(False)
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 (per optimisation step)."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / span))


# --- the host-side plan: every random draw, made up front -------------------------------------


@dataclass(frozen=True)
class ClusterPlan:
    prompt: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    sizes: tuple[int, ...]
    """Rows of each of the cluster's steps."""
    factors: tuple[float, ...]
    """Learning-rate factor of each step."""
    index: torch.Tensor
    """int64 [rows]: the sample (within the cluster) of each row, step after step."""
    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor
    """bool [rows]."""


def plan_cluster(
    n: int,
    seed: int,
    tcfg: TrainingConfig,
    pcfg: PromptConfig,
    size: int,
    num_classes: int,
    num_features: int,
) -> ClusterPlan:
    """Draw a cluster's initial parameters and its whole data and augmentation stream.

    The draw order is fixed: prompt, weight, bias; then per epoch a permutation and per step
    the crop offsets and the flips.
    """
    if n == 0:
        raise ValueError("cannot train an empty cluster")
    gen = torch.Generator().manual_seed(seed)
    mask = border_mask(size, pcfg.width)[0]
    prompt = torch.randn(3, size, size, generator=gen) * pcfg.init_std * mask
    bound = 1.0 / math.sqrt(num_features)
    weight = (torch.rand(num_classes, num_features, generator=gen) * 2 - 1) * bound
    bias = (torch.rand(num_classes, generator=gen) * 2 - 1) * bound
    pad, b = tcfg.augment.crop_padding, tcfg.batch_size
    index, offsets, flips, sizes = [], [], [], []
    epochs = tcfg.epochs_for(n)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for lo in range(0, n, b):
            idx = order[lo : lo + b]
            index.append(idx)
            sizes.append(len(idx))
            if pad:
                offsets.append(torch.randint(0, 2 * pad + 1, (len(idx), 2), generator=gen))
            else:
                offsets.append(torch.zeros(len(idx), 2, dtype=torch.int64))
            if tcfg.augment.hflip:
                flips.append(torch.rand(len(idx), generator=gen) < 0.5)
            else:
                flips.append(torch.zeros(len(idx), dtype=torch.bool))
    per_epoch = math.ceil(n / b)
    total, warmup = per_epoch * epochs, round(per_epoch * tcfg.warmup_epochs)
    off = torch.cat(offsets)
    return ClusterPlan(
        prompt,
        weight,
        bias,
        tuple(sizes),
        tuple(lr_factor(s, total, warmup) for s in range(total)),
        torch.cat(index),
        off[:, 0].contiguous(),
        off[:, 1].contiguous(),
        torch.cat(flips),
    )


def crop_flip(
    padded: torch.Tensor,
    rows: torch.Tensor,
    dy: torch.Tensor,
    dx: torch.Tensor,
    flip: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """Crop ``size``-pixel windows at (dy, dx) out of zero-padded images, mirrored where
    ``flip``: one gather, on whatever device the tensors live. Exact (uint8 copies)."""
    ar = torch.arange(size, device=padded.device)
    r = dy[:, None] + ar
    c = dx[:, None] + torch.where(flip[:, None], size - 1 - ar, ar)
    ch = torch.arange(padded.shape[1], device=padded.device)
    return padded[
        rows[:, None, None, None], ch[None, :, None, None], r[:, None, :, None], c[:, None, None, :]
    ]


# --- the device-side loop ---------------------------------------------------------------------


class _Cluster:
    """One cluster's device state: parameters, momentum, its plan's rows on the device."""

    def __init__(self, plan: ClusterPlan, base: int, device: torch.device):
        self.plan = plan
        self.params = [
            t.to(device).requires_grad_(True) for t in (plan.prompt, plan.weight, plan.bias)
        ]
        self.momentum: list[torch.Tensor] = []  # filled by the cluster's first step
        starts = [0]
        for s in plan.sizes:
            starts.append(starts[-1] + s)
        self.starts = starts
        self.rows = (plan.index + base).to(device)
        self.dy, self.dx, self.flip = (t.to(device) for t in (plan.dy, plan.dx, plan.flip))

    @property
    def steps(self) -> int:
        return len(self.plan.sizes)

    def slice(self, step: int) -> slice:
        return slice(self.starts[step], self.starts[step + 1])


def _grad(p: torch.Tensor) -> torch.Tensor:
    """``p``'s gradient: every parameter takes part in the loss, so backward gave it one."""
    assert p.grad is not None
    return p.grad


def _sgd_step(clusters: list[_Cluster], first: bool, tcfg: TrainingConfig, step: int) -> None:
    """SGD with momentum (PyTorch semantics) for exactly the clusters given.

    foreach kernels apply the same per-tensor arithmetic whichever tensors share the list,
    so a cluster's update does not depend on its companions.
    """
    params = [p for c in clusters for p in c.params]
    grads = [_grad(p) for p in params]
    if tcfg.weight_decay:
        torch._foreach_add_(grads, params, alpha=tcfg.weight_decay)
    if tcfg.momentum:
        if first:
            for c in clusters:
                c.momentum = [_grad(p).clone() for p in c.params]
        else:
            bufs = [b for c in clusters for b in c.momentum]
            torch._foreach_mul_(bufs, tcfg.momentum)
            torch._foreach_add_(bufs, grads)
        updates = [b for c in clusters for b in c.momentum]
    else:
        updates = grads
    scales = []
    for c in clusters:
        f = c.plan.factors[step]
        scales += [-tcfg.prompt_lr * f, -tcfg.head_lr * f, -tcfg.head_lr * f]
    torch._foreach_add_(params, torch._foreach_mul(updates, scales))
    for p in params:
        p.grad = None


def train_pack(
    backbone: Backbone,
    datas: Sequence[ClusterData] | PackImages,
    tcfg: TrainingConfig,
    pcfg: PromptConfig,
    num_classes: int,
    on_step: Callable[[int], None] | None = None,
) -> list[TrainedCluster]:
    """Train every cluster of ``datas`` from scratch, together; results in input order."""
    if not isinstance(datas, PackImages):
        if not datas:
            raise ValueError("a pack needs at least one cluster")
        datas = PackImages.of(datas, tcfg.augment.crop_padding)
    if not datas.counts:
        raise ValueError("a pack needs at least one cluster")
    start = time.perf_counter()
    device, size = backbone.device, backbone.image_size
    plans = [
        plan_cluster(n, seed, tcfg, pcfg, size, num_classes, backbone.num_features)
        for n, seed in zip(datas.counts, datas.seeds)
    ]
    padded = datas.padded.to(device)
    bases = [0]
    for n in datas.counts[:-1]:
        bases.append(bases[-1] + n)
    labels = datas.labels.to(device)
    clusters = [_Cluster(p, b, device) for p, b in zip(plans, bases)]
    mask = border_mask(size, pcfg.width, device)
    model = backbone.train_step_model
    bf16 = backbone.precision == "bf16"
    packed = not backbone.deterministic and len(clusters) > 1

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(backbone.prepare_input(x)).float()

    for step in range(max(c.steps for c in clusters)):
        active = [c for c in clusters if step < c.steps]
        if packed:
            _packed_step(active, step, padded, labels, mask, size, num_classes, features, backbone)
        else:
            for c in active:
                sl = c.slice(step)
                rows = c.rows[sl]
                views = crop_flip(padded, rows, c.dy[sl], c.dx[sl], c.flip[sl], size)
                one = views.shape[0] == 1
                if one:
                    # The CPU convolution backward of a one-image batch is not bitwise
                    # reproducible run to run; two rows take the reproducible path. The
                    # copy carries no loss, so its gradient is exactly zero.
                    views = views.expand(2, -1, -1, -1)
                prompt, weight, bias = c.params
                x = apply_prompt(backbone.normalize(views), prompt, mask)
                logits = F.linear(features(x), weight, bias)
                loss = F.cross_entropy(logits[:1] if one else logits, labels[rows])
                loss.backward()
        with torch.no_grad():
            _sgd_step(active, step == 0, tcfg, step)
        if on_step is not None:
            on_step(sum(c.plan.sizes[step] for c in active))

    seconds = time.perf_counter() - start
    work = [sum(p.sizes) for p in plans]
    out = []
    with torch.no_grad():
        for c, w in zip(clusters, work):
            prompt, weight, bias = c.params
            out.append(
                TrainedCluster(
                    (prompt * mask[0]).detach().cpu().contiguous(),
                    weight.detach().cpu().contiguous(),
                    bias.detach().cpu().contiguous(),
                    c.steps,
                    seconds * w / sum(work),
                )
            )
    return out


def _packed_step(
    active: list[_Cluster],
    step: int,
    padded: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    size: int,
    num_classes: int,
    features: Callable[[torch.Tensor], torch.Tensor],
    backbone: Backbone,
) -> None:
    """One backbone pass over every active cluster's micro-batch, sorted by cluster.

    Dense everywhere: prompts are broadcast per cluster segment (their gradient is a plain
    sum over the segment, no scatter), heads are one batched matmul over clusters padded to
    the longest segment, and each cluster's loss is its own mean.
    """
    slices = [c.slice(step) for c in active]
    counts = [c.plan.sizes[step] for c in active]
    rows = torch.cat([c.rows[s] for c, s in zip(active, slices)])
    views = crop_flip(
        padded,
        rows,
        torch.cat([c.dy[s] for c, s in zip(active, slices)]),
        torch.cat([c.dx[s] for c, s in zip(active, slices)]),
        torch.cat([c.flip[s] for c, s in zip(active, slices)]),
        size,
    )
    prompts = [c.params[0] * mask[0] for c in active]
    x = backbone.normalize(views)
    k, longest = len(active), max(counts)
    if min(counts) == longest:  # all segments equal: a reshape, no copies
        x = (x.view(k, longest, *x.shape[1:]) + torch.stack(prompts)[:, None]).flatten(0, 1)
    else:
        x = x + torch.cat([p.expand(n, -1, -1, -1) for p, n in zip(prompts, counts)])
    feats = features(x)
    if min(counts) == longest:
        grid = feats.view(k, longest, -1)
    else:
        grid = torch.stack(
            [F.pad(f, (0, 0, 0, longest - n)) for f, n in zip(feats.split(counts), counts)]
        )
    weight = torch.stack([c.params[1] for c in active])
    bias = torch.stack([c.params[2] for c in active])
    logits = torch.baddbmm(bias[:, None, :], grid, weight.transpose(1, 2))
    target = torch.full((k, longest), -100, dtype=torch.int64, device=labels.device)
    scale = torch.zeros(k, longest, device=labels.device)
    for i, (n, r) in enumerate(zip(counts, rows.split(counts))):
        target[i, :n] = labels[r]
        scale[i, :n] = 1.0 / n
    ce = F.cross_entropy(
        logits.reshape(-1, num_classes), target.reshape(-1), reduction="none", ignore_index=-100
    )
    (ce * scale.reshape(-1)).sum().backward()


def train_cluster(
    backbone: Backbone,
    data: ClusterData,
    tcfg: TrainingConfig,
    pcfg: PromptConfig,
    num_classes: int,
    on_step: Callable[[int], None] | None = None,
) -> TrainedCluster:
    """One cluster alone: a pack of one."""
    return train_pack(backbone, [data], tcfg, pcfg, num_classes, on_step)[0]


def _prompted(
    backbone: Backbone, prompt: torch.Tensor, images: torch.Tensor, batch_size: int
) -> Iterator[torch.Tensor]:
    """Backbone features (float32, on the device) of canonical views under one prompt, a
    batch of ``batch_size`` at a time."""
    prompt = prompt.to(backbone.device)
    for lo in range(0, images.shape[0], batch_size):
        x = backbone.prepare_input(backbone.normalize(images[lo : lo + batch_size]) + prompt)
        yield backbone.trainer(x).float()


@torch.no_grad()
def prompted_features(
    backbone: Backbone, prompt: torch.Tensor, images: torch.Tensor, batch_size: int = 64
) -> torch.Tensor:
    """Backbone features (float32, on the CPU) of canonical views under one prompt."""
    out = [f.cpu() for f in _prompted(backbone, prompt, images, batch_size)]
    return torch.cat(out) if out else torch.zeros(0, backbone.num_features)


@torch.no_grad()
def logits_batch(
    backbone: Backbone,
    prompt: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    images: torch.Tensor,
    batch_size: int = 64,
) -> torch.Tensor:
    """Class logits (float32, on the CPU) of canonical views under one cluster's prompt and
    head."""
    weight, bias = weight.to(backbone.device), bias.to(backbone.device)
    out = [F.linear(f, weight, bias).cpu() for f in _prompted(backbone, prompt, images, batch_size)]
    return torch.cat(out) if out else torch.zeros(0, weight.shape[0])


def predict_batch(
    backbone: Backbone,
    prompt: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    images: torch.Tensor,
    batch_size: int = 64,
) -> torch.Tensor:
    """Predicted class indices of canonical views under one cluster's prompt and head."""
    return logits_batch(backbone, prompt, weight, bias, images, batch_size).argmax(1)
