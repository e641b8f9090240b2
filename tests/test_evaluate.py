"""``eraserd evaluate --quick`` on the embedded default (the real digits, the pretrained
Lite0, the configured partition), through the real command: each method is built by the
production engine, and the paper's orderings that the measured data supports must hold. If
one fails on this real data, this test fails: it reports the numbers, it is not loosened."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_util import eraserd
from conftest import dead_pid

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


def is_png(path: Path) -> bool:
    """A PNG file of some substance (a figure, not an empty canvas's few bytes)."""
    data = path.read_bytes()
    return data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


@pytest.mark.slow
def test_quick_evaluation_holds_the_papers_orderings(tmp_path, record_property):
    from eraserd.scratchdirs import EVALUATE, OWNER, make_owned

    scratch, plots = tmp_path / "scratch", tmp_path / "plots"
    scratch.mkdir()
    killed = make_owned(scratch, EVALUATE)  # as a SIGKILLed run leaves its private copies
    (killed / "base").mkdir()
    (killed / OWNER).write_text(f"{dead_pid()}\n")
    out = eraserd(
        "evaluate", "--quick", "--json", "-c", EXAMPLE, "--scratch", scratch, "--plots", plots
    )
    report = json.loads(out.stdout)
    # Progress goes to stderr, with --json too: the full run takes 20 minutes.
    assert "building lmeraser, seed 0" in out.stderr and "building sisa, seed 0" in out.stderr
    assert f"removed {killed}" in out.stderr and not killed.exists()
    assert report["plots"] == [str(plots / "cost_per_deletion.png")]
    assert is_png(plots / "cost_per_deletion.png")
    rows = {r["method"]: r for r in report["methods"]}
    assert list(rows) == ["lmeraser", "single", "random", "shared", "sisa"]
    record_property(
        "summary",
        "evaluate --quick: "
        + "; ".join(
            f"{m} {r['accuracy_mean']:.2%}, {r['retrain_samples_mean']:.0f} retrained/deletion"
            for m, r in rows.items()
        ),
    )
    lm, single, rnd, shared, sisa = (
        rows[m] for m in ("lmeraser", "single", "random", "shared", "sisa")
    )
    assert single["clusters_mean"] == 1 and lm["clusters_mean"] >= 5
    assert rnd["clusters_mean"] == lm["clusters_mean"] == sisa["clusters_mean"]
    assert single["retrain_share_mean"] > 0.99  # one prompt: every deletion retrains it all
    # The shared head: LMEraser's clusters, and every deletion retrains the head on all the
    # data, after the same forget as LMEraser's.
    assert shared["clusters_mean"] == lm["clusters_mean"]
    assert shared["retrain_share_mean"] == 1.0
    assert shared["retrain_compute_mean"] > lm["retrain_compute_mean"]
    assert shared["forget_s"][0] > lm["forget_s"][0]
    assert all(len(r["forget_s"]) == 1 and r["forget_s"][0] > 0 for r in rows.values())
    assert all(0 < r["accuracy_mean"] <= 1 and r["accuracy_sd"] == 0 for r in rows.values())
    claims = {c["claim"]: c for c in report["orderings"]}
    assert len(claims) == 2
    for claim, check in claims.items():
        assert check["holds"], f"{claim}: {check['detail']}"
    assert list(scratch.iterdir()) == [], "the scratch states were left behind"


@pytest.mark.slow
def test_the_ablations_forget_real_subjects_and_sweep_the_prompts(make_config, tmp_path):
    """On the small real-digits config: the unlearning curve forgets the training subjects a
    share at a time through real forgets (each sample of a forgotten subject leaves the
    training set), and the sweep builds the asked cluster counts (one prompt is the single
    baseline's build)."""
    from eraserd.eraser import Eraser
    from eraserd.evaluation import evaluate

    cfg = make_config("a")
    with Eraser(cfg) as er:
        er.ingest()
        train = er.store.rows("train")
    per_subject: dict[str, int] = {}
    for r in train:
        per_subject[r.subject_id or r.sample_id] = (
            per_subject.get(r.subject_id or r.sample_id, 0) + 1
        )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    report = evaluate(
        cfg,
        [cfg.seed],
        1,
        scratch,
        methods=("lmeraser", "single"),
        ratios=(0.0, 0.25, 0.5),
        prompts=(1, 3),
    )
    curve = report["unlearning"]
    assert [p["ratio"] for p in curve] == [0.0, 0.25, 0.5]
    assert [p["subjects_forgotten"] for p in curve] == [
        0,
        round(0.25 * len(per_subject)),
        round(0.5 * len(per_subject)),
    ]
    # The curve starts from the first seed's build as it was before its timed forget.
    assert curve[0]["train"] == len(train)
    lm = next(r for r in report["runs"] if r["method"] == "lmeraser")
    assert curve[0]["accuracy"] == lm["accuracy"] and curve[0]["clusters"] == lm["clusters"]
    sizes = sorted(per_subject.values())
    for p in curve[1:]:  # the forgotten subjects' samples left, every one of them
        k, removed = p["subjects_forgotten"], len(train) - p["train"]
        assert sum(sizes[:k]) <= removed <= sum(sizes[-k:]), (k, removed)
    assert curve[0]["train"] > curve[1]["train"] > curve[2]["train"]
    assert all(0 < p["accuracy"] <= 1 for p in curve) and curve[1]["retrained"] >= 1
    sweep = report["prompts"]
    assert [(r["n_clusters"], r["clusters"]) for r in sweep] == [(1, 1), (3, 3)]
    single = next(r for r in report["runs"] if r["method"] == "single")
    assert sweep[0] == {"n_clusters": 1, **single}  # one prompt: the single baseline's build
    assert sweep[0]["retrain_share"] > 0.99 > sweep[1]["retrain_share"]
    assert "as training subjects are forgotten" in report["table"]
    assert "by number of prompts" in report["table"]
    assert list(scratch.iterdir()) == []
    from eraserd.evalplots import plot_report

    written = plot_report(report, tmp_path / "plots")
    assert [p.name for p in written] == [
        "cost_per_deletion.png",
        "accuracy_vs_unlearning_ratio.png",
        "accuracy_vs_prompts.png",
    ]
    assert all(is_png(p) for p in written)


def test_bad_plot_and_scratch_directories_fail_before_any_build(tmp_path):
    """A directory the run could not write is refused at once, with its name: not after the
    builds (the full run takes most of an hour)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad = eraserd("evaluate", "-c", EXAMPLE, "--plots", blocker / "plots", check=False)
    assert bad.returncode != 0 and "--plots: cannot create" in bad.stderr
    missing = eraserd("evaluate", "-c", EXAMPLE, "--scratch", tmp_path / "nope", check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
