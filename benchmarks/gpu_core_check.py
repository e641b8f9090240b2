"""GPU check of the core: build, forget and verify on CUDA, timed, in deterministic mode.

Prints what it ran on and whether `verify` (a from-scratch rebuild on the live data) came out
bit-identical to the forgotten model, plus build/forget/verify seconds. Sized to finish in a
few minutes on one GPU; a CPU machine runs it too (``--device cpu``).

    python benchmarks/gpu_core_check.py [--device cuda:0] [--epochs 12]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

from eraserd import checks
from eraserd.config import config_from_dict
from eraserd.eraser import Eraser

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--epochs", type=int, default=12)
    args = ap.parse_args()
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw.pop("daemon", None)
    raw["runtime"] = {"device": args.device, "num_threads": 8, "deterministic": True}
    raw["training"]["epochs"] = args.epochs
    report: dict = {
        "device": args.device,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with tempfile.TemporaryDirectory() as tmp:
        raw["state_dir"] = str(Path(tmp) / "state")
        cfg = config_from_dict(raw, EXAMPLE.parent)
        with Eraser(cfg) as er:
            t = time.perf_counter()
            m = er.build()
            report["build_s"] = round(time.perf_counter() - t, 2)
            report["clusters"] = len(m.clusters)
            report["accuracy"] = m.accuracy
            rows = er.samples()
            subject = next(
                r["subject_id"]
                for r in rows
                if r["split"] == "train" and not r["in_clustering_sample"]
            )
            sample = next(r["sample_id"] for r in rows if r["in_clustering_sample"])
            t = time.perf_counter()
            res = er.forget(sample_ids=[sample], subject_ids=[subject])
            report["forget_s"] = round(time.perf_counter() - t, 2)
            report["forget"] = {
                "retrained": len(res.retrained),
                "reclustered": res.reclustered,
                "version": res.version,
            }
            t = time.perf_counter()
            v = checks.verify(er)
            report["verify_s"] = round(time.perf_counter() - t, 2)
            report["verify_identical"] = v["identical"]
            report["verify_problems"] = v["problems"]
            report["verify_clusters"] = v["clusters"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
