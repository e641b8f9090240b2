"""Makespan of one batch of K retune jobs of skewed sizes on D devices, against the ideal.

The local pool hands out jobs largest first to whichever worker is free. For each setting
this prints the measured makespan, the ideal max(sum of job times / D, largest job time)
computed from the jobs' own measured durations, and their ratio (1.00 is perfect packing).

    python benchmarks/makespan.py [--devices cpu,cpu] [--sizes 160,80,40,40,20,20,10,10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from eraserd.config import config_from_dict
from eraserd.executor import RetuneJob
from eraserd.executor.local import LocalPool
from eraserd.training.engine import ClusterData


def job(key: str, n: int, size: int, epochs: int) -> RetuneJob:
    def load() -> ClusterData:
        g = torch.Generator().manual_seed(n)
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
        return ClusterData(images, torch.arange(n) % 10, n)

    return RetuneJob(key, float(n * epochs), 10, load)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="cpu,cpu")
    ap.add_argument("--sizes", default="160,80,40,40,20,20,10,10")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per worker")
    args = ap.parse_args()
    devices = args.devices.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_from_dict(
            {
                "state_dir": str(Path(tmp) / "state"),
                "backbone": {"image_size": args.image_size},
                "prompt": {"width": max(1, args.image_size // 8)},
                "training": {"epochs": args.epochs, "batch_size": 16},
                "runtime": {"num_threads": args.threads},
            }
        )
        jobs = [job(f"c{i:02d}", n, args.image_size, args.epochs) for i, n in enumerate(sizes)]
        pool = LocalPool(cfg, devices)
        try:
            pool.run([job("warmup", 4, args.image_size, 1)])  # workers up, backbone loaded
            start = time.perf_counter()
            results = pool.run(jobs)
            makespan = time.perf_counter() - start
        finally:
            pool.close()
    times = [r.seconds for r in results.values()]
    ideal = max(sum(times) / len(devices), max(times))
    print(
        f"makespan of {len(jobs)} jobs (sizes {sizes}, {args.epochs} epochs, "
        f"EfficientNet-Lite0 @ {args.image_size}px) on {len(devices)} device(s) "
        f"{devices}, {args.threads} thread(s) each"
    )
    print(f"{'job':>6} {'images':>7} {'seconds':>8} {'device':>7}")
    for j in jobs:
        r = results[j.key]
        print(f"{j.key:>6} {int(j.cost / args.epochs):>7} {r.seconds:8.2f} {r.device:>7}")
    print(f"sum of job times {sum(times):.2f}s, largest {max(times):.2f}s")
    print(
        f"measured makespan {makespan:.2f}s, ideal max(sum/D, largest) {ideal:.2f}s, "
        f"ratio {makespan / ideal:.2f}"
    )


if __name__ == "__main__":
    main()
