#!/usr/bin/env python3
"""CPU retune speed beside other work: libgomp's default spinning against eraserd's default.

One cluster of the embedded default's shape (EfficientNet-Lite0 at 64 px, batch 32, 2 torch
threads) trains a fixed number of steps in a fresh process, once per OpenMP setting, side by
side in one run, while 0..L busy processes want the cores too. Prints steps/s and the ratio
of each setting to libgomp's default at the same load. The trained prompt's checksum is
printed too: a spin setting changes timing, never results (the 1-thread row differs, by
design: thread count is part of the numerics).

    .venv/bin/python benchmarks/contention.py [--steps 60] [--loads 0 2] [--rounds 2]
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

SETTINGS = {
    "libgomp default": {"GOMP_SPINCOUNT": "300000", "threads": 2},
    "eraserd default": {"threads": 2},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE", "threads": 2},
    "1 thread": {"threads": 1},
}

CHILD = r"""
import dataclasses, json, sys, time
import torch
from eraserd.config import RuntimeConfig, TrainingConfig, PromptConfig, BackboneConfig
from eraserd.model.backbone import load_backbone
from eraserd.training.engine import ClusterData, configure_torch, train_cluster

threads, steps = int(sys.argv[1]), int(sys.argv[2])
runtime = RuntimeConfig(device="cpu", num_threads=threads, deterministic=True)
configure_torch(runtime)
bb = load_backbone(
    BackboneConfig(name="efficientnet_lite0", weights="builtin:efficientnet_lite0", image_size=64),
    runtime,
)
g = torch.Generator().manual_seed(0)
data = ClusterData(
    torch.randint(0, 256, (64, 3, 64, 64), generator=g, dtype=torch.uint8),
    torch.randint(0, 10, (64,), generator=g),
    1,
)
pcfg = PromptConfig(width=8)
tcfg = TrainingConfig(epochs=1, min_steps=5, batch_size=32)
train_cluster(bb, data, tcfg, pcfg, 10)  # warm-up
tcfg = dataclasses.replace(tcfg, min_steps=steps)
t = time.perf_counter()
out = train_cluster(bb, data, tcfg, pcfg, 10)
seconds = time.perf_counter() - t
print(json.dumps({"steps_per_s": out.steps / seconds, "checksum": float(out.prompt.sum())}))
"""


def run(setting: dict, steps: int) -> dict:
    env = {k: v for k, v in setting.items() if k != "threads"}
    return run_json(CHILD, setting["threads"], steps, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="timed steps per run")
    ap.add_argument("--loads", type=int, nargs="+", default=[0, 2], help="busy processes")
    ap.add_argument("--rounds", type=int, default=2, help="runs per setting and load (median)")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, {args.steps} steps, median of {args.rounds}")
    for load in args.loads:
        rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
        sums: dict[str, float] = {}
        with busy(load):
            for _ in range(args.rounds):
                for name, setting in SETTINGS.items():  # interleaved: drift hits all alike
                    r = run(setting, args.steps)
                    rates[name].append(r["steps_per_s"])
                    sums[name] = r["checksum"]
        base = statistics.median(rates["libgomp default"])
        print(f"\n{load} busy process(es)")
        for name, xs in rates.items():
            med = statistics.median(xs)
            print(
                f"  {name:16s} {med:7.2f} steps/s   x{med / base:5.2f} vs libgomp default"
                f"   prompt checksum {sums[name]:.6f}"
            )


if __name__ == "__main__":
    main()
