"""What ``eraserd evaluate`` reports, from its runs: per method the held-out accuracy (mean and
sample standard deviation over seeds), the build time, what a random single deletion
retrains, and measured forget times; the paper's orderings checked against those numbers;
and the text table. Pure: no I/O, no torch.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Run:
    """One method built with one seed."""

    method: str
    seed: int
    accuracy: float
    clusters: int
    train: int
    build_s: float
    retrain_share: float
    """Expected share of the training data a random single deletion retrains."""
    retrain_clusters: float
    """Expected clusters (prompts and heads) a random single deletion retrains."""
    retrain_compute: float
    """Its expected training work, over that of one prompt trained on all the data."""
    cluster_params: int
    """Trainable parameters of one cluster: its prompt and its head (its prompt alone when
    the head is shared)."""
    shared_params: int = 0
    """Trainable parameters every deletion retrains besides its clusters': a shared head."""

    @property
    def retrain_samples(self) -> float:
        return self.retrain_share * (self.train - 1)

    @property
    def retrain_params(self) -> float:
        return self.retrain_clusters * self.cluster_params + self.shared_params

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "retrain_samples": self.retrain_samples,
            "retrain_params": self.retrain_params,
        }


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(
    runs: Sequence[Run], forget_s: Mapping[str, Sequence[float]], order: Sequence[str]
) -> list[dict]:
    """One row per method, in ``order``: means (and sd of accuracy) over its seeds."""
    out = []
    for method in order:
        mine = [r for r in runs if r.method == method]
        if not mine:
            continue
        acc, sd = _mean_sd([r.accuracy for r in mine])
        times = list(forget_s.get(method, ()))
        out.append(
            {
                "method": method,
                "seeds": [r.seed for r in mine],
                "accuracy_mean": acc,
                "accuracy_sd": sd,
                "clusters_mean": statistics.fmean(r.clusters for r in mine),
                "build_s_mean": statistics.fmean(r.build_s for r in mine),
                "retrain_share_mean": statistics.fmean(r.retrain_share for r in mine),
                "retrain_samples_mean": statistics.fmean(r.retrain_samples for r in mine),
                "retrain_params_mean": statistics.fmean(r.retrain_params for r in mine),
                "retrain_compute_mean": statistics.fmean(r.retrain_compute for r in mine),
                "forget_s": times,
                "forget_s_median": statistics.median(times) if times else None,
            }
        )
    return out


def orderings(summary: Sequence[Mapping]) -> list[dict]:
    """The paper's claims this evaluation can test, each with whether it held and the
    numbers: LMEraser's accuracy is at least random partitioning's (Fig. 8), and a deletion
    retrains at most a fifth of what the single prompt retrains (Fig. 7)."""
    by = {row["method"]: row for row in summary}
    out = []
    if "lmeraser" in by and "random" in by:
        lm, rnd = by["lmeraser"]["accuracy_mean"], by["random"]["accuracy_mean"]
        out.append(
            {
                "claim": "LMEraser's accuracy >= random partitioning's",
                "holds": lm >= rnd,
                "detail": f"{lm:.2%} against {rnd:.2%}",
            }
        )
    if "lmeraser" in by and "single" in by:
        lm, one = by["lmeraser"]["retrain_samples_mean"], by["single"]["retrain_samples_mean"]
        out.append(
            {
                "claim": "LMEraser retrains <= 1/5 of the single prompt's samples per deletion",
                "holds": lm <= one / 5,
                "detail": f"{lm:.1f} against {one:.1f} / 5 = {one / 5:.1f}",
            }
        )
    return out


def render(
    summary: Sequence[Mapping],
    checks: Sequence[Mapping],
    curve: Sequence[Mapping] = (),
    sweep: Sequence[Mapping] = (),
) -> str:
    """The text table, the checked orderings, and the ablations when they ran."""
    lines = [
        f"{'method':<10}{'seeds':>6}{'accuracy':>18}{'clusters':>9}{'build s':>9}"
        f"{'retrained/deletion':>20}{'params/deletion':>16}{'work/deletion':>14}{'forget s':>10}"
    ]
    for row in summary:
        acc = f"{row['accuracy_mean']:.2%} ± {row['accuracy_sd']:.2%}"
        retrained = f"{row['retrain_samples_mean']:.1f} ({row['retrain_share_mean']:.1%})"
        forget = row["forget_s_median"]
        lines.append(
            f"{row['method']:<10}{len(row['seeds']):>6}{acc:>18}{row['clusters_mean']:>9.1f}"
            f"{row['build_s_mean']:>9.1f}{retrained:>20}{row['retrain_params_mean']:>16,.0f}"
            f"{row['retrain_compute_mean']:>14.1%}{'-' if forget is None else f'{forget:.2f}':>10}"
        )
    lines.append(
        "accuracy: held-out, mean ± sd over seeds; retrained/deletion: expected training "
        "samples one random deletion retrains (share of the data); params/deletion: the "
        "prompt and head parameters it retrains; work/deletion: its training work over one "
        "prompt's on all the data; forget s: median wall time of the measured single deletions"
    )
    for c in checks:
        lines.append(f"{'holds' if c['holds'] else 'FAILS'}: {c['claim']} ({c['detail']})")
    if curve:
        lines += ["", "LMEraser as training subjects are forgotten (each step one forget):"]
        lines.append(
            f"{'forgotten':>10}{'subjects':>10}{'train':>7}{'accuracy':>10}{'clusters':>9}"
            f"{'retrained':>10}{'forget s':>10}"
        )
        for p in curve:
            lines.append(
                f"{p['ratio']:>10.0%}{p['subjects_forgotten']:>10}{p['train']:>7}"
                f"{p['accuracy']:>10.2%}{p['clusters']:>9}{p['retrained']:>10}"
                f"{p['forget_s']:>10.1f}"
            )
    if sweep:
        lines += ["", "LMEraser's accuracy by number of prompts (dendrogram cuts, no cap):"]
        lines.append(
            f"{'n_clusters':>10}{'clusters':>9}{'accuracy':>10}{'retrained/deletion':>20}"
            f"{'build s':>9}"
        )
        for r in sweep:
            lines.append(
                f"{r['n_clusters']:>10}{r['clusters']:>9}{r['accuracy']:>10.2%}"
                f"{r['retrain_samples']:>12.1f} ({r['retrain_share']:.1%})"
                f"{r['build_s']:>9.1f}"
            )
    return "\n".join(lines)
