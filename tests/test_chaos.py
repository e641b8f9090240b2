"""Chaos in ``make test``: at least 20 SIGKILLs of a real daemon and its workers (some while
a worker is still starting) under continuous deletion requests and predictions. Every
acknowledged request ends published exactly once, nothing is lost, no read is torn, and the
state passes ``verify`` and ``audit verify``. ``benchmarks/chaos.py`` runs a longer round."""

from __future__ import annotations

import pytest
from chaos import Chaos

KILLS = 20


@pytest.mark.slow
def test_chaos_loses_no_acknowledged_deletion(prebuilt, digits_data, record_property):
    config = prebuilt(window=0.5, retry_backoff_s=0.2, retry_backoff_max_s=1.0)
    image = (digits_data / "img" / "0001.png").read_bytes()
    chaos = Chaos(config, image, requests=30, seed=0, daemon_share=0.3)
    tally = chaos.run(kills=KILLS)
    record_property("summary", tally.summary())
    assert tally.problems(min_kills=KILLS) == [], tally.summary()
    assert tally.kills["starting worker"] >= 1 and tally.kills["daemon"] >= 1
    assert len(tally.acked) == len(chaos.plan)
    assert tally.published == len(tally.acked)
