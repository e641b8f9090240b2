"""Bounded clusters at scale: largest share and cost per deletion as N grows, side by side.

Usage::

    python benchmarks/partition_scale.py [--n 22000] [--sizes 5000,10000,22000] \\
        [--settings S1000/t17.4/capnone,S1000/t17.4/cap0.05] [--workdir DIR]

Writes a generated image folder of real-looking digits (``synthetic_digits.py``), ingests it
into a private store with the configured backbone (EfficientNet-Lite0 at 64 px by default)
and extracts every feature once. Then, for nested subsets of the training data (the images
numbered below each size), it partitions with each setting through the real partition code
and replays single deletions through it (``eraserd/cost.py``, the numbers ``eraserd info``
reports), printing clusters, the largest cluster's share, the expected share retrained per
random deletion, its recluster part, the ratio to the first setting's cost, and whether the
largest cluster held the cap. Nothing is trained: the retrain share depends on the
partition only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from partition_sweep import apply  # noqa: E402
from synthetic_digits import make_folder  # noqa: E402

from eraserd.config import DataConfig, load_config  # noqa: E402
from eraserd.cost import Replay, Rule  # noqa: E402
from eraserd.eraser import Eraser  # noqa: E402
from eraserd.model.features import ensure_features  # noqa: E402

INDEX = re.compile(r"img-(\d+)\.png$")


def features(cfg, folder: Path, n: int):
    """Every training id and feature of the folder, extracted once into the store."""
    make_folder(folder, n)
    with Eraser(cfg) as er:
        if er.store.is_empty():
            er.ingest()
        train = er.store.rows("train")
        feats = ensure_features(er.store, er.backbone, train)
    return [r.sample_id for r in train], feats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(Path(__file__).parent.parent / "config.example.yaml"))
    ap.add_argument("--n", type=int, default=22000, help="Images in the generated folder.")
    ap.add_argument("--sizes", default="5000,10000,22000", help="Nested subsets (images).")
    ap.add_argument(
        "--settings", default="S1000/t17.4/capnone,S1000/t17.4/cap0.05,S1000/t17.4/cap0.03"
    )
    ap.add_argument("--evaluations", type=int, default=64, help="Sample deletions replayed.")
    ap.add_argument("--workdir", default=None, help="Keep the folder and feature cache here.")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="partition-scale-"))
    base = load_config(args.config)
    cfg = dataclasses.replace(
        base,
        state_dir=work / "state",
        data=DataConfig(source=str(work / "images"), test_fraction=0.1),
    )
    start = time.perf_counter()
    ids, feats = features(cfg, work / "images", args.n)
    print(f"{len(ids)} training images, features in {time.perf_counter() - start:.0f}s")
    settings = args.settings.split(",")
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        subset = [i for i in ids if int(INDEX.search(i).group(1)) < size]
        replays: dict[int, Replay] = {}
        for setting in settings:
            c = apply(cfg, setting).clustering
            replay = replays.setdefault(
                c.sample_size, Replay(subset, feats, cfg.seed, c.sample_size)
            )
            t0 = time.perf_counter()
            rule = Rule(c.distance_threshold, c.n_clusters, c.max_cluster_share)
            cost = replay.cost(rule, evaluations=args.evaluations)
            rows.append(
                {"images": size, "train": len(subset), "setting": setting, **cost.to_dict()}
            )
            rows[-1]["seconds"] = round(time.perf_counter() - t0, 1)
    print(
        f"{'train':>6} {'setting':<24} {'clusters':>8} {'largest':>8} {'retrain/del':>11} "
        f"{'P(recl)':>8} {'recl':>10} {'vs first':>8} {'cap':>6}"
    )
    for r in rows:
        first = next(x for x in rows if x["train"] == r["train"])
        ratio = first["expected_retrain_share"] / r["expected_retrain_share"]
        recl = f"{r['recluster_share']:.0%}±{r['recluster_share_se']:.0%}"
        cap = apply(cfg, r["setting"]).clustering.max_cluster_share
        held = "" if cap is None else ("held" if r["largest_share"] <= cap else "OVER")
        print(
            f"{r['train']:>6} {r['setting']:<24} {r['clusters']:>8} {r['largest_share']:>8.2%} "
            f"{r['expected_retrain_share']:>11.2%} {r['p_recluster']:>8.1%} {recl:>10} "
            f"{ratio:>7.1f}x {held:>6}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
