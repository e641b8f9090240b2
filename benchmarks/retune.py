"""Retune throughput: the paper code's training style vs eraserd's engine, side by side.

Usage::

    python benchmarks/retune.py --backbone efficientnet_lite0 --weights builtin \\
        --image-size 64 --clusters 6 --cluster-size 96 --epochs 2

Three ways to retune the same clusters on the same device, in one run:

(i) ``paper``: the style of the LMEraser/DAM-VP reference code. Every step of batch 128 takes
    its images through per-sample torchvision transforms (random crop with padding, flip,
    normalise), as a Dataset does under a DataLoader with no worker processes, then
    runs a no-grad forward to route each sample to its nearest prototype, then calls each
    sample's pad prompter (which reassembles its border from four pad tensors) and each
    sample's head in Python loops, in fp32, with torch's default (non-deterministic)
    settings. The backbone is in eval mode but its weights keep ``requires_grad`` (they are
    only left out of the optimizer), so the backward pass also computes weight gradients.
(ii) ``solo``: eraserd's engine, one cluster at a time (frozen weights, BatchNorm folded,
    channels-last on conv nets, per-cluster micro-batches).
(iii) ``packed``: eraserd's engine, every cluster in one job, in packed mode: each backbone
    pass is shared by every active cluster (``runtime.deterministic: false``).
(iv) ``packed-det``: every cluster in one job, in deterministic mode: batched optimizer
    updates, but each cluster's micro-batch goes through the backbone on its own (bitwise
    equal to solo). This is what CPU deployments run.
(v) ``pool``: the local executor, as the daemon runs it, with ``--workers`` worker processes
    on the device, each with ``threads / workers`` threads, each training a deterministic pack
    (the executor splits the clusters into one pack per worker, balanced by cost). The paper
    code's single loop over every cluster cannot spread over workers this way.

``--repeat N`` runs the whole comparison N times, interleaved, and keeps each mode's best
rate, which damps the noise of a shared machine.

Throughput is image-steps per second: one image through one training step. Effective
TFLOP/s counts the useful work only, forward plus input-gradient backward, measured with
PyTorch's FLOP counter, the same for every style. ``--peak-tflops`` adds the fraction of
the device's bound.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eraserd.config import (  # noqa: E402
    BUILTIN_LITE0,
    AugmentConfig,
    BackboneConfig,
    PromptConfig,
    RuntimeConfig,
    TrainingConfig,
)
from eraserd.model.backbone import Backbone, load_backbone  # noqa: E402
from eraserd.training.engine import ClusterData, configure_torch, train_pack  # noqa: E402


def useful_flops_per_image(backbone: Backbone) -> float:
    """Forward plus input-gradient backward of one image, on the engine's network."""
    from torch.utils.flop_counter import FlopCounterMode

    size = backbone.image_size
    x = torch.zeros(2, 3, size, size, device=backbone.device, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        backbone.trainer(backbone.prepare_input(x)).float().sum().backward()
    return counter.get_total_flops() / 2


def make_clusters(k: int, n: int, size: int, num_classes: int) -> list[ClusterData]:
    g = torch.Generator().manual_seed(0)
    return [
        ClusterData(
            torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, num_classes, (n,), generator=g),
            1000 + i,
        )
        for i in range(k)
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PadPrompter(torch.nn.Module):
    """The reference code's border prompt: four pad parameters, reassembled on every call."""

    def __init__(self, size: int, width: int):
        super().__init__()
        self.base = size - 2 * width
        self.up = torch.nn.Parameter(torch.zeros(1, 3, width, size))
        self.down = torch.nn.Parameter(torch.zeros(1, 3, width, size))
        self.left = torch.nn.Parameter(torch.zeros(1, 3, self.base, width))
        self.right = torch.nn.Parameter(torch.zeros(1, 3, self.base, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = torch.zeros(1, 3, self.base, self.base, device=x.device)
        prompt = torch.cat([self.left, base, self.right], dim=3)
        prompt = torch.cat([self.up, prompt, self.down], dim=2)
        return x + torch.cat(x.shape[0] * [prompt])


def paper_style(
    backbone: Backbone,
    clusters: list[ClusterData],
    tcfg: TrainingConfig,
    pcfg: PromptConfig,
    num_classes: int,
    batch: int,
    steps: int,
) -> tuple[int, float]:
    """The reference code's loop over the union of the clusters' data; (image-steps, s)."""
    device, size = backbone.device, backbone.image_size
    model = copy.deepcopy(backbone.model).float().eval()
    for p in model.parameters():  # eval mode, weights not frozen: only left out of the optimizer
        p.requires_grad_(True)
    k = len(clusters)
    gen = torch.Generator().manual_seed(0)
    prompters = [PadPrompter(size, pcfg.width).to(device) for _ in range(k)]
    heads = [torch.nn.Linear(backbone.num_features, num_classes).to(device) for _ in range(k)]
    protos = torch.randn(k, backbone.num_features, generator=gen).to(device)
    opt = torch.optim.SGD(
        [{"params": p.parameters(), "lr": tcfg.prompt_lr} for p in prompters]
        + [{"params": h.parameters(), "lr": tcfg.head_lr} for h in heads],
        momentum=tcfg.momentum,
    )
    images = torch.cat([c.images for c in clusters])
    labels = torch.cat([c.labels for c in clusters])

    from torchvision import transforms as T

    pad = tcfg.augment.crop_padding
    augment = T.Compose(  # a Dataset's per-sample transforms (DataLoader, num_workers=0)
        [
            T.RandomCrop(size, padding=pad) if pad else T.Lambda(lambda t: t),
            T.RandomHorizontalFlip() if tcfg.augment.hflip else T.Lambda(lambda t: t),
            T.ConvertImageDtype(torch.float32),
            T.Normalize(backbone.mean.flatten().tolist(), backbone.std.flatten().tolist()),
        ]
    )

    def step() -> None:
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen).tolist()
        x = torch.stack([augment(images[i]) for i in idx]).to(device)
        y = labels[idx].to(device)
        with torch.no_grad():  # routing forward, every step
            route = torch.cdist(model(x), protos).argmin(1).tolist()
        prompted = torch.cat([prompters[route[i]](x[i : i + 1]) for i in range(batch)])
        feats = model(prompted)
        logits = torch.cat([heads[route[i]](feats[i : i + 1]) for i in range(batch)])
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps, time.perf_counter() - start


def engine_run(
    backbone: Backbone,
    packs: list[list[ClusterData]],
    tcfg: TrainingConfig,
    pcfg: PromptConfig,
    num_classes: int,
) -> tuple[int, float]:
    work = [0]
    train_pack(backbone, [packs[0][0]], dataclass_epochs(tcfg, 1), pcfg, num_classes)  # warm-up
    sync(backbone.device)
    start = time.perf_counter()
    for pack in packs:
        train_pack(backbone, pack, tcfg, pcfg, num_classes, on_step=lambda n: work.append(n))
    sync(backbone.device)
    return sum(work), time.perf_counter() - start


def pool_run(args, clusters, tcfg, pcfg, num_classes) -> tuple[int, float, str]:
    """Every cluster as a retune job through the local worker pool; (image-steps, s, note)."""
    import dataclasses
    import tempfile

    from eraserd.config import config_from_dict
    from eraserd.executor import RetuneJob
    from eraserd.executor.local import LocalPool

    threads = max(1, args.threads // args.workers)
    weights = {"builtin": BUILTIN_LITE0, "none": None}.get(args.weights, args.weights)
    cfg = config_from_dict(
        {
            "state_dir": tempfile.mkdtemp(prefix="retune-bench-"),
            "backbone": {"name": args.backbone, "weights": weights, "image_size": args.image_size},
            "prompt": dataclasses.asdict(pcfg),
            "training": dataclasses.asdict(tcfg),
            "runtime": {"device": args.device, "num_threads": threads, "deterministic": True},
        }
    )
    devices = [args.device] * args.workers

    def jobs(cs):
        return [
            RetuneJob(
                f"c{i:03d}", float(c.images.shape[0] * tcfg.epochs), num_classes, lambda c=c: c
            )
            for i, c in enumerate(cs)
        ]

    pool = LocalPool(cfg, devices)
    try:
        pool.run(jobs(clusters[: args.workers]))  # workers up and warm
        start = time.perf_counter()
        pool.run(jobs(clusters))
        seconds = time.perf_counter() - start
    finally:
        pool.close()
    images = sum(c.images.shape[0] for c in clusters) * tcfg.epochs
    return images, seconds, f"{args.workers} workers x {threads} threads, deterministic packs"


def dataclass_epochs(tcfg: TrainingConfig, epochs: int) -> TrainingConfig:
    import dataclasses

    return dataclasses.replace(tcfg, epochs=epochs, warmup_epochs=min(tcfg.warmup_epochs, epochs))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="builtin", help="builtin (Lite0), none (random), a file")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clusters", type=int, default=6)
    ap.add_argument("--cluster-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32, help="per-cluster micro-batch")
    ap.add_argument("--paper-batch", type=int, default=128)
    ap.add_argument("--paper-steps", type=int, default=4)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--modes", default="paper,solo,packed,packed-det")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2, help="worker processes for the pool mode")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak, for the bound")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    weights = {"builtin": BUILTIN_LITE0, "none": None}.get(args.weights, args.weights)
    bcfg = BackboneConfig(name=args.backbone, weights=weights, image_size=args.image_size)
    num_classes = 10
    tcfg = TrainingConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        warmup_epochs=1.0 if args.epochs >= 1 else 0.0,
        augment=AugmentConfig(crop_padding=4, hflip=True),
    )
    pcfg = PromptConfig(width=max(1, args.image_size // 8))

    def runtime(deterministic: bool) -> RuntimeConfig:
        return RuntimeConfig(
            device=args.device,
            num_threads=args.threads,
            deterministic=deterministic,
            precision=args.precision,
            compile=args.compile,
        )

    configure_torch(runtime(True))
    solo_bb = load_backbone(bcfg, runtime(True))
    clusters = make_clusters(args.clusters, args.cluster_size, args.image_size, num_classes)
    flops = useful_flops_per_image(solo_bb)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    rows: dict[str, dict] = {}

    best: dict[str, tuple[float, int, float, str]] = {}

    def record(name: str, images: int, seconds: float, note: str) -> None:
        rate = images / seconds
        print(
            f"  {name:10s} {rate:10.1f} image-steps/s  {rate * flops / 1e12:8.4f} TFLOP/s  {note}"
        )
        if name not in best or rate > best[name][0]:
            best[name] = (rate, images, seconds, note)

    print(
        f"{args.backbone} @ {args.image_size}px on {args.device} ({args.threads} threads): "
        f"{args.clusters} clusters x {args.cluster_size} images x {args.epochs} epochs, "
        f"{flops / 1e9:.3f} GFLOP per image-step (fwd + input-grad bwd)"
    )
    fast_bb = None
    for r in range(args.repeat):
        if args.repeat > 1:
            print(f" round {r + 1}/{args.repeat}")
        if "paper" in modes:
            configure_torch(runtime(False))  # the reference code runs with torch's defaults
            images, seconds = paper_style(
                solo_bb, clusters, tcfg, pcfg, num_classes, args.paper_batch, args.paper_steps
            )
            record("paper", images, seconds, f"batch {args.paper_batch}, fp32, routing fwd + loops")
        if "solo" in modes:
            configure_torch(runtime(True))
            images, seconds = engine_run(solo_bb, [[c] for c in clusters], tcfg, pcfg, num_classes)
            record("solo", images, seconds, f"one cluster per job, {solo_bb.precision}")
        if "packed-det" in modes:
            configure_torch(runtime(True))
            images, seconds = engine_run(solo_bb, [clusters], tcfg, pcfg, num_classes)
            record(
                "packed-det",
                images,
                seconds,
                f"{len(clusters)} clusters per job, deterministic, {solo_bb.precision}",
            )
        if "packed" in modes:
            configure_torch(runtime(False))
            fast_bb = fast_bb or load_backbone(bcfg, runtime(False))
            images, seconds = engine_run(fast_bb, [clusters], tcfg, pcfg, num_classes)
            record(
                "packed",
                images,
                seconds,
                f"{len(clusters)} clusters per job, shared passes, {fast_bb.precision}",
            )
    if "pool" in modes:
        images, seconds, note = pool_run(args, clusters, tcfg, pcfg, num_classes)
        record("pool", images, seconds, note)
    if args.repeat > 1:
        print(f" best of {args.repeat}:")
    for name, (rate, images, seconds, note) in best.items():
        rows[name] = {
            "image_steps": images,
            "seconds": round(seconds, 3),
            "image_steps_per_s": round(rate, 1),
            "tflops": round(rate * flops / 1e12, 4),
            "note": note,
        }
        if args.peak_tflops:
            bound = args.peak_tflops * 1e12 / flops
            rows[name]["bound_image_steps_per_s"] = round(bound, 1)
            rows[name]["fraction_of_bound"] = round(rate / bound, 4)
        if args.repeat > 1:
            print(f"  {name:10s} {rate:10.1f} image-steps/s  {rate * flops / 1e12:8.4f} TFLOP/s")
        if args.peak_tflops:
            print(f"  {name:10s} {100 * rows[name]['fraction_of_bound']:.1f}% of the bound")

    ratios = {}
    pairs = [(m, "paper") for m in ("solo", "packed-det", "packed", "pool")] + [
        ("packed", "solo"),
        ("packed-det", "solo"),
    ]
    for a, b in pairs:
        if a in rows and b in rows:
            ratios[f"{a}/{b}"] = round(
                rows[a]["image_steps_per_s"] / rows[b]["image_steps_per_s"], 2
            )
            print(f"  ratio {a}/{b}: {ratios[f'{a}/{b}']:.2f}x")
    fastest = max(rows, key=lambda m: rows[m]["image_steps_per_s"], default=None)
    if fastest is not None:
        cifar = 260 * 50 / rows[fastest]["image_steps_per_s"]
        print(
            f"  a CIFAR-10-sized cluster (260 images x 50 epochs) at {fastest}'s rate: {cifar:.2f}s"
        )
        ratios["cifar10_cluster_s"] = round(cifar, 3)
    result = {
        "backbone": args.backbone,
        "image_size": args.image_size,
        "device": args.device,
        "device_name": (
            torch.cuda.get_device_name(torch.device(args.device))
            if args.device.startswith("cuda")
            else platform.processor() or platform.machine()
        ),
        "torch": torch.__version__,
        "gflop_per_image_step": round(flops / 1e9, 4),
        "results": rows,
        "ratios": ratios,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not math.isfinite(flops) or flops <= 0:
        raise SystemExit("could not count the backbone's FLOPs")
    return result


if __name__ == "__main__":
    main()
