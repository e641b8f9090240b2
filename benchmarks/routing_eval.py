"""Held-out accuracy of one built model under each routing rule, without retraining.

Usage::

    python benchmarks/routing_eval.py --config C [--config C2 ...] [--neighbors 1,3,5,7]

Routing never changes what a cluster trains on, so every rule can be scored on the same
prompts and heads: each cluster's softmax is computed once for every held-out image, and each
rule only picks which cluster answers. Rows: ``prototype`` (the paper's nearest prototype),
``neighbors k`` (a vote of the k nearest training points, ``routing.method: neighbors``), and
``blend k`` (not an eraserd rule: the voters' clusters' softmaxes summed, weighted by votes,
which costs one forward pass per distinct cluster among the voters; shown for comparison).
Also printed: the share of held-out images routed to a cluster without a single training
image of their class. The ``neighbors`` row of the configured k equals the model's own
``accuracy`` when it was built with neighbour routing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eraserd.clustering import Routing, routing_points  # noqa: E402
from eraserd.config import load_config  # noqa: E402
from eraserd.eraser import Eraser  # noqa: E402
from eraserd.materialize import load_views  # noqa: E402
from eraserd.model.features import ensure_features  # noqa: E402
from eraserd.model.predictor import Predictor  # noqa: E402


def evaluate(config: Path, ks: list[int]) -> dict[str, tuple[float, float]]:
    """{rule: (accuracy, share routed to a cluster without the input's class)}."""
    cfg = load_config(config)
    with Eraser(cfg) as er:
        manifest = er.registry.load()
        pred = Predictor.load(er.registry, er.backbone, manifest.version)
        part = er.current_partition(manifest)
        test, train = er.store.rows("test"), er.store.rows("train")
        feats = ensure_features(er.store, er.backbone, test + train)
        label = {r.sample_id: r.label for r in train}
        x = np.stack([feats[r.sample_id] for r in test])
        y = torch.tensor([r.label for r in test])
        views = load_views(er.store, test, er.backbone.image_size)
        bb = er.backbone
        probs = []
        with torch.no_grad():
            for k in range(len(part.keys)):
                inp = bb.prepare_input(bb.normalize(views) + pred.prompts[k])
                logits = F.linear(bb.trainer(inp).float(), pred.weights[k], pred.biases[k])
                probs.append(logits.softmax(1))
    p = torch.stack(probs)  # [K, n, C]
    rows = torch.arange(len(test))
    classes = [{label[i] for i in m} for m in part.members]

    def score(route: np.ndarray) -> tuple[float, float]:
        acc = (p[torch.from_numpy(route), rows].argmax(1) == y).float().mean().item()
        missing = np.mean([int(c) not in classes[k] for c, k in zip(y.tolist(), route)])
        return acc, float(missing)

    out = {"prototype": score(Routing(part.prototypes).route(x))}
    points, owner = routing_points(part, feats, cfg.seed, cfg.routing.points_per_cluster)
    for k in ks:
        out[f"neighbors {k}"] = score(Routing(part.prototypes, points, owner, k).route(x))
    dist = [np.argsort(((points - q) ** 2).sum(1), kind="stable") for q in x.astype(np.float32)]
    for k in ks:
        votes = torch.zeros(len(part.keys), len(test))
        for i, order in enumerate(dist):
            for j in order[:k]:
                votes[owner[j], i] += 1
        blended = (votes[:, :, None] * p).sum(0)
        out[f"blend {k}"] = ((blended.argmax(1) == y).float().mean().item(), float("nan"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", required=True, help="A built model's config.")
    ap.add_argument("--neighbors", default="1,3,5,7")
    args = ap.parse_args()
    ks = [int(k) for k in args.neighbors.split(",")]
    results = [evaluate(Path(c), ks) for c in args.config]
    print(f"{'rule':<14} " + " ".join(f"{'model ' + str(i):>9}" for i in range(len(results))))
    for rule in results[0]:
        accs = [r[rule][0] for r in results]
        cells = " ".join(f"{100 * a:>8.2f}%" for a in accs)
        mean = f"  mean {100 * statistics.mean(accs):.2f}%"
        miss = [r[rule][1] for r in results]
        no_class = "" if np.isnan(miss[0]) else f"  no-class {100 * statistics.mean(miss):.1f}%"
        print(f"{rule:<14} {cells}{mean}{no_class}")


if __name__ == "__main__":
    main()
