#!/usr/bin/env python3
"""Routing-feature throughput: fixed-shape batched passes against one image at a time.

Real digit images (PNG bytes, decoded and resized as ``ensure_features`` does) go through
EfficientNet-Lite0 at 64 px with 2 threads, each method in a fresh process, interleaved
over rounds, side by side in one run:

- ``one at a time (0.1)``: what eraserd 0.1 did, the unfolded network on one image per pass;
- ``feature_batch=1``: today's network, one image per pass;
- ``feature_batch=B``: today's default, every pass the same padded shape.

It prints images/s, the ratio to the first two, and whether the batched features equal the
``feature_batch=B`` features of each image computed alone, bit for bit. ``--loads`` repeats
the batched run beside busy processes, with libgomp's default spinning and with eraserd's:
a busy machine should slow extraction in proportion to the cores it takes, not collapse it.

    .venv/bin/python benchmarks/features.py [--images 512] [--rounds 3] [--loads 0 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_load import busy  # noqa: E402  (the same bounded busy loops as the load test)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import run_json  # noqa: E402

CHILD = r"""
import hashlib, io, json, sys, time
import numpy as np, torch
from PIL import Image
from sklearn.datasets import load_digits
from eraserd.config import BackboneConfig, RuntimeConfig
from eraserd.data.images import canonical_view
from eraserd.model.backbone import load_backbone
from eraserd.training.engine import configure_torch

method, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
runtime = RuntimeConfig(device="cpu", num_threads=2, feature_batch=batch)
configure_torch(runtime)
bb = load_backbone(
    BackboneConfig(name="efficientnet_lite0", weights="builtin:efficientnet_lite0", image_size=64),
    runtime,
)
digits = load_digits().images
pngs = []
for i in range(n):
    buf = io.BytesIO()
    img = np.rint(digits[i % len(digits)] * (255 / 16)).astype(np.uint8)
    Image.fromarray(np.roll(img, i // len(digits), axis=1), mode="L").save(buf, format="PNG")
    pngs.append(buf.getvalue())

def extract(chunk):
    views = torch.stack([canonical_view(p, 64) for p in chunk])
    if method == "old":
        with torch.no_grad():
            return np.stack([bb.model(bb.normalize(v[None]))[0].numpy() for v in views])
    return bb.features(views)

extract(pngs[:batch])  # warm-up
t = time.perf_counter()
out = np.concatenate([extract(pngs[i : i + 256]) for i in range(0, n, 256)])
seconds = time.perf_counter() - t
same = None
if method == "batched":
    alone = np.stack([bb.feature(canonical_view(p, 64)) for p in pngs[:64]])
    same = bool(np.array_equal(alone, out[:64]))
print(json.dumps({"images_per_s": n / seconds, "alone_equal": same,
                  "digest": hashlib.sha256(out.tobytes()).hexdigest()[:12]}))
"""

METHODS = {"one at a time (0.1)": "old", "feature_batch=1": "single", "feature_batch=B": "batched"}
SPIN = {
    "libgomp default": {"GOMP_SPINCOUNT": "300000"},
    "eraserd default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
}


def run(method: str, images: int, batch: int, env_extra: dict | None = None) -> dict:
    return run_json(CHILD, method, images, batch if method != "single" else 1, env=env_extra)


def main() -> None:
    from eraserd.config import RuntimeConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=RuntimeConfig().feature_batch)
    ap.add_argument("--rounds", type=int, default=3, help="runs per method (median)")
    ap.add_argument("--loads", type=int, nargs="*", default=[0, 2], help="busy processes")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, {args.images} images at 64 px, B={args.batch}")
    rates: dict[str, list[float]] = {name: [] for name in METHODS}
    facts: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, method in METHODS.items():  # interleaved: drift hits all alike
            r = run(method, args.images, args.batch)
            rates[name].append(r["images_per_s"])
            facts[name] = r
    med = {name: statistics.median(xs) for name, xs in rates.items()}
    batched = med["feature_batch=B"]
    for name in METHODS:
        print(
            f"  {name:20s} {med[name]:8.1f} img/s   batched is x{batched / med[name]:5.2f}"
            f"   features {facts[name]['digest']}"
        )
    print(f"  batched == each image alone, bit for bit: {facts['feature_batch=B']['alone_equal']}")
    if not args.loads:
        return
    print("\nbatched extraction beside busy processes (median img/s; share of the quiet rate)")
    quiet: dict[str, float] = {}
    for load in args.loads:
        with busy(load):
            for spin, env in SPIN.items():
                xs = [
                    run("batched", args.images, args.batch, env)["images_per_s"]
                    for _ in range(args.rounds)
                ]
                rate = statistics.median(xs)
                quiet.setdefault(spin, rate)
                print(
                    f"  {load} busy  {spin:16s} {rate:8.1f} img/s   "
                    f"{rate / quiet[spin]:5.2f} of quiet"
                )


if __name__ == "__main__":
    main()
