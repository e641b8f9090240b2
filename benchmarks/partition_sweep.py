"""Clusters vs accuracy vs cost per deletion: one row per partition setting, several seeds.

Usage::

    python benchmarks/partition_sweep.py [--config config.example.yaml] [--seeds 0,1,2] \\
        [--settings single,default,S100/t17.4/cap0.1,...] [--json out.json]

For each seed, the configured data is ingested once into a private state directory (the seed
also draws the held-out split), and every setting is built from scratch on it with the real
engine (in-process executor, deterministic mode). A setting is ``single`` (one prompt and
head over all data: ``n_clusters: 1``), ``default`` (the config as it is), or slash-
separated overrides: ``S<sample_size>``, ``t<distance_threshold>``, ``n<n_clusters>``,
``cap<max_cluster_share>``, ``mp<min_cluster_points>``, ``e<epochs>``, ``b<batch_size>``,
``m<min_steps>``, ``hl<head_lr>``, ``pl<prompt_lr>``, ``wd<weight_decay>``, ``r<routing
method>`` (``rprototype``, ``rneighbors``), ``k<neighbors>``. Each row prints
the mean over seeds of the cluster count, the largest cluster's share of the training data,
the expected share retrained per random single deletion (recluster included: ``eraserd
info``'s ``expected_retrain_share``), the held-out accuracy as mean ± sd, and the build
time, followed by each setting's accuracy against the single prompt's on the same seeds.
With ``--json``, every finished build is written at once and a rerun with the same file
skips the (setting, seed) pairs it already holds, so a long sweep survives an interruption.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eraserd import progress  # noqa: E402
from eraserd.config import Config, load_config  # noqa: E402
from eraserd.eraser import Eraser  # noqa: E402

KEYS = {
    "S": ("clustering", "sample_size", int),
    "t": ("clustering", "distance_threshold", float),
    "n": ("clustering", "n_clusters", int),
    "cap": ("clustering", "max_cluster_share", float),
    "mp": ("clustering", "min_cluster_points", int),
    "e": ("training", "epochs", int),
    "b": ("training", "batch_size", int),
    "m": ("training", "min_steps", int),
    "hl": ("training", "head_lr", float),
    "pl": ("training", "prompt_lr", float),
    "wd": ("training", "weight_decay", float),
    "r": ("routing", "method", str),
    "k": ("routing", "neighbors", int),
}


def apply(cfg: Config, setting: str) -> Config:
    """The config of one setting (see the module docstring)."""
    if setting == "default":
        return cfg
    if setting == "single":
        return dataclasses.replace(
            cfg,
            clustering=dataclasses.replace(
                cfg.clustering, distance_threshold=None, n_clusters=1, max_cluster_share=None
            ),
        )
    sections: dict[str, dict] = {"clustering": {}, "training": {}, "routing": {}}
    for part in setting.split("/"):
        for prefix in sorted(KEYS, key=len, reverse=True):
            if part.startswith(prefix):
                section, key, kind = KEYS[prefix]
                raw = part[len(prefix) :]
                sections[section][key] = None if raw == "none" else kind(raw)
                break
        else:
            raise SystemExit(f"unknown override {part!r} in setting {setting!r}")
    clustering = sections["clustering"]
    if "n_clusters" in clustering:
        clustering.setdefault("distance_threshold", None)
    elif "distance_threshold" in clustering:
        clustering.setdefault("n_clusters", None)
    return dataclasses.replace(
        cfg,
        clustering=dataclasses.replace(cfg.clustering, **clustering),
        training=dataclasses.replace(cfg.training, **sections["training"]),
        routing=dataclasses.replace(cfg.routing, **sections["routing"]),
    )


def run(
    base: Config, seeds: list[int], settings: list[str], work: Path, out: Path | None = None
) -> list[dict]:
    rows = json.loads(out.read_text())["rows"] if out is not None and out.exists() else []
    done = {(r["setting"], r["seed"]) for r in rows}
    for seed in seeds:
        if all((s, seed) in done for s in settings):
            continue
        state = work / f"seed{seed}"
        seeded = dataclasses.replace(
            base,
            seed=seed,
            state_dir=state,
            executor=dataclasses.replace(base.executor, backend="inline"),
        )
        with Eraser(seeded) as er:
            if er.store.is_empty():
                er.ingest()
        for setting in settings:
            if (setting, seed) in done:
                continue
            cfg = apply(seeded, setting)
            start = time.perf_counter()
            with Eraser(cfg) as er:
                m = er.build()
            rows.append(
                {
                    "setting": setting,
                    "seed": seed,
                    "clusters": len(m.clusters),
                    "largest_share": m.cost["largest_share"],
                    "expected_retrain_share": m.cost["expected_retrain_share"],
                    "recluster_share": m.cost["recluster_share"],
                    "accuracy": m.accuracy,
                    "seconds": time.perf_counter() - start,
                }
            )
            print(
                f"  seed {seed} {setting}: {rows[-1]['clusters']} clusters, accuracy "
                f"{m['accuracy']:.4f}, retrain/deletion "
                f"{m['cost']['expected_retrain_share']:.3f}, {rows[-1]['seconds']:.0f}s",
                file=sys.stderr,
                flush=True,
            )
            if out is not None:
                out.write_text(json.dumps({"rows": rows}, indent=2))
    return rows


def summarize(rows: list[dict], settings: list[str]) -> list[dict]:
    out = []
    single = {r["seed"]: r["accuracy"] for r in rows if r["setting"] == "single"}
    for s in settings:
        mine = [r for r in rows if r["setting"] == s]
        acc = [r["accuracy"] for r in mine]
        paired = [r["accuracy"] - single[r["seed"]] for r in mine if r["seed"] in single]
        out.append(
            {
                "setting": s,
                "seeds": len(mine),
                "clusters": statistics.mean(r["clusters"] for r in mine),
                "largest_share": statistics.mean(r["largest_share"] for r in mine),
                "expected_retrain_share": statistics.mean(
                    r["expected_retrain_share"] for r in mine
                ),
                "recluster_share": statistics.mean(r["recluster_share"] for r in mine),
                "accuracy_mean": statistics.mean(acc),
                "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "vs_single": statistics.mean(paired) if paired else None,
                "build_seconds": statistics.mean(r["seconds"] for r in mine),
            }
        )
    return out


def table(summary: list[dict]) -> str:
    lines = [
        f"{'setting':<28} {'clusters':>8} {'largest':>8} {'retrain/del':>11} {'recl':>6} "
        f"{'accuracy':>15} {'vs single':>9} {'build s':>8}"
    ]
    for r in summary:
        vs = "" if r["vs_single"] is None else f"{100 * r['vs_single']:+.2f}pt"
        lines.append(
            f"{r['setting']:<28} {r['clusters']:>8.1f} {r['largest_share']:>8.1%} "
            f"{r['expected_retrain_share']:>11.1%} {r['recluster_share']:>6.0%} "
            f"{100 * r['accuracy_mean']:>7.2f} ± {100 * r['accuracy_sd']:<5.2f} {vs:>9} "
            f"{r['build_seconds']:>8.0f}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(Path(__file__).parent.parent / "config.example.yaml"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--settings", default="single,default")
    ap.add_argument("--workdir", default=None, help="Keep state (and its feature cache) here.")
    ap.add_argument("--json", default=None, help="Also write rows and summary to this file.")
    args = ap.parse_args()
    progress.set_enabled(False)
    base = load_config(args.config)
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = args.settings.split(",")
    out = Path(args.json) if args.json else None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        rows = run(base, seeds, settings, work, out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = run(base, seeds, settings, Path(tmp), out)
    rows = [r for r in rows if r["setting"] in settings and r["seed"] in seeds]
    summary = summarize(rows, settings)
    print(f"{base.data.source}, {base.backbone.name} @ {base.backbone.image_size}px, seeds {seeds}")
    print(table(summary))
    if out is not None:
        out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
