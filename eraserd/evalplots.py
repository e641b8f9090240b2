"""``eraserd evaluate --plots DIR``: the evaluation's figures as PNG files (needs matplotlib,
the ``dev`` extra): the cost of a deletion per method, and, with ``--ablations``, accuracy
against the share of subjects forgotten and against the number of prompts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

COST = "cost_per_deletion.png"
UNLEARNING = "accuracy_vs_unlearning_ratio.png"
PROMPTS = "accuracy_vs_prompts.png"


def plot_report(report: Mapping, out: Path) -> list[Path]:
    """Write the report's figures into ``out`` (created if needed); the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = [_cost(plt, report["methods"], out / COST)]
    if report.get("unlearning"):
        written.append(_unlearning(plt, report["unlearning"], out / UNLEARNING))
    if report.get("prompts"):
        written.append(_prompts(plt, report["prompts"], out / PROMPTS))
    return written


def _cost(plt, methods: Sequence[Mapping], path: Path) -> Path:
    names = [m["method"] for m in methods]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.bar(names, [m["retrain_samples_mean"] for m in methods], color="tab:blue")
    ax1.set_ylabel("training samples retrained")
    ax1.set_yscale("log")
    ax2.bar(
        names,
        [m["accuracy_mean"] * 100 for m in methods],
        color="tab:green",
        yerr=[m["accuracy_sd"] * 100 for m in methods],
        capsize=4,
    )
    ax2.set_ylabel("held-out accuracy (%)")
    fig.suptitle("Expected cost of one random deletion, and accuracy (mean ± sd)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _unlearning(plt, curve: Sequence[Mapping], path: Path) -> Path:
    xs = [p["ratio"] * 100 for p in curve]
    ys = [p["accuracy"] * 100 for p in curve]
    return _line(
        plt, xs, ys, "training subjects forgotten (%)", "LMEraser as data is unlearned", path
    )


def _prompts(plt, sweep: Sequence[Mapping], path: Path) -> Path:
    xs = [r["clusters"] for r in sweep]
    ys = [r["accuracy"] * 100 for r in sweep]
    return _line(
        plt, xs, ys, "prompts (clusters)", "LMEraser by number of prompts", path, log2=True
    )


def _line(plt, xs, ys, xlabel: str, title: str, path: Path, log2: bool = False) -> Path:
    """Held-out accuracy against ``xs``, as one line with markers."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(xs, ys, "o-")
    if log2:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
