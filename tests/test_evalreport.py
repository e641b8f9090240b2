"""``evalreport.py``: the evaluation's summary, orderings and table from its runs (pure)."""

from __future__ import annotations

import pytest

from eraserd.evalreport import Run, orderings, render, summarize

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`


def run(method: str, seed: int, accuracy: float, share: float, clusters: float = 1.0) -> Run:
    return Run(
        method=method,
        seed=seed,
        accuracy=accuracy,
        clusters=4,
        train=1001,
        build_s=10.0 + seed,
        retrain_share=share,
        retrain_clusters=clusters,
        retrain_compute=share,
        cluster_params=100,
    )


RUNS = [
    run("lmeraser", 0, 0.90, 0.10, 1.5),
    run("lmeraser", 1, 0.94, 0.14, 1.5),
    run("single", 0, 0.95, 1.0),
    run("single", 1, 0.97, 1.0),
    run("random", 0, 0.80, 0.25),
    run("random", 1, 0.84, 0.25),
]


def test_the_summary_is_the_mean_and_sample_sd_over_seeds():
    rows = summarize(RUNS, {"lmeraser": [1.0, 3.0, 2.0]}, ["lmeraser", "single", "random"])
    assert [r["method"] for r in rows] == ["lmeraser", "single", "random"]
    lm = rows[0]
    assert lm["seeds"] == [0, 1]
    assert lm["accuracy_mean"] == pytest.approx(0.92)
    assert lm["accuracy_sd"] == pytest.approx(0.0282843, rel=1e-5)  # sample sd of .90, .94
    assert lm["retrain_samples_mean"] == pytest.approx(0.12 * 1000)
    assert lm["retrain_params_mean"] == pytest.approx(150.0)
    assert lm["build_s_mean"] == pytest.approx(10.5)
    assert lm["forget_s_median"] == 2.0
    assert rows[1]["forget_s_median"] is None and rows[1]["forget_s"] == []


def test_orderings_hold_or_fail_on_the_numbers():
    checks = orderings(summarize(RUNS, {}, ["lmeraser", "single", "random"]))
    assert [c["holds"] for c in checks] == [True, True]
    assert "92.00% against 82.00%" in checks[0]["detail"]
    worse = [r for r in RUNS if r.method != "random"] + [run("random", 0, 0.93, 0.2)]
    dearer = [r for r in RUNS if r.method != "lmeraser"] + [run("lmeraser", 0, 0.9, 0.21)]
    assert [c["holds"] for c in orderings(summarize(worse, {}, ["lmeraser", "random"]))] == [False]
    held = orderings(summarize(dearer, {}, ["lmeraser", "single"]))
    assert [c["holds"] for c in held] == [False]
    assert "210.0 against 1000.0 / 5 = 200.0" in held[0]["detail"]


def test_the_table_names_every_method_and_each_ordering():
    rows = summarize(RUNS, {"lmeraser": [1.5]}, ["lmeraser", "single", "random"])
    text = render(rows, orderings(rows))
    lines = text.splitlines()
    assert lines[1].split()[:2] == ["lmeraser", "2"] and "92.00% ± 2.83%" in lines[1]
    assert "1.50" in lines[1] and lines[2].rstrip().endswith("-")
    assert sum(line.startswith("holds: ") for line in lines) == 2


def test_a_shared_head_is_retrained_by_every_deletion_besides_its_clusters():
    import dataclasses

    shared = dataclasses.replace(run("shared", 0, 0.9, 1.0, 1.5), cluster_params=40)
    shared = dataclasses.replace(shared, shared_params=60)
    assert shared.retrain_params == 1.5 * 40 + 60
    assert shared.to_dict()["retrain_params"] == 120.0
    assert shared.retrain_samples == 1000
