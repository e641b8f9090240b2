"""``eraserd evaluate --quick`` on the embedded default (the real digits, the pretrained
Lite0, the configured partition), through the real command: each method is built by the
production engine, and the paper's orderings that the measured data supports must hold. If
one fails on this real data, this test fails: it reports the numbers, it is not loosened."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_util import eraserd

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


@pytest.mark.slow
def test_quick_evaluation_holds_the_papers_orderings(tmp_path, record_property):
    out = eraserd("evaluate", "--quick", "--json", "-c", EXAMPLE, "--scratch", tmp_path)
    report = json.loads(out.stdout)
    rows = {r["method"]: r for r in report["methods"]}
    assert list(rows) == ["lmeraser", "single", "random", "sisa"]
    record_property(
        "summary",
        "evaluate --quick: "
        + "; ".join(
            f"{m} {r['accuracy_mean']:.2%}, {r['retrain_samples_mean']:.0f} retrained/deletion"
            for m, r in rows.items()
        ),
    )
    lm, single, rnd, sisa = (rows[m] for m in ("lmeraser", "single", "random", "sisa"))
    assert single["clusters_mean"] == 1 and lm["clusters_mean"] >= 5
    assert rnd["clusters_mean"] == lm["clusters_mean"] == sisa["clusters_mean"]
    assert single["retrain_share_mean"] > 0.99  # one prompt: every deletion retrains it all
    assert all(len(r["forget_s"]) == 1 and r["forget_s"][0] > 0 for r in rows.values())
    assert all(0 < r["accuracy_mean"] <= 1 and r["accuracy_sd"] == 0 for r in rows.values())
    claims = {c["claim"]: c for c in report["orderings"]}
    assert len(claims) == 2
    for claim, check in claims.items():
        assert check["holds"], f"{claim}: {check['detail']}"
    assert list(tmp_path.iterdir()) == [], "the scratch states were left behind"
