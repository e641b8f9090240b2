"""The flush policy and the batch-duration estimate: pure functions, no clock, no I/O."""

from __future__ import annotations

import pytest

from eraserd.config import DaemonConfig
from eraserd.flush import FlushPolicy, flush_reason, retry_delay, update_estimate
from eraserd.queue import Pending

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`

CFG = DaemonConfig(batch_window_s=60, max_batch_samples=10, deadline_margin_s=5)
FAR = 1_000_000.0  # a deadline nowhere near


def pending(requests: int = 1, samples: int = 1, deadline: float | None = FAR) -> Pending:
    return Pending(
        requests=requests, samples=samples, oldest_created=0.0, earliest_deadline=deadline
    )


def test_nothing_pending_never_flushes_even_when_every_rule_would_fire():
    empty = Pending(requests=0, samples=0, oldest_created=None, earliest_deadline=None)
    assert flush_reason(empty, now=1000.0, window_start=0.0, cfg=CFG, predicted_s=0.0) is None
    # requests == 0 wins over a (stale) sample count and a passed deadline
    odd = Pending(requests=0, samples=50, oldest_created=0.0, earliest_deadline=1.0)
    assert flush_reason(odd, now=1000.0, window_start=0.0, cfg=CFG, predicted_s=0.0) is None


def test_size_reached_flushes_and_takes_precedence():
    # window elapsed and deadline passed too: size still wins
    p = pending(samples=10, deadline=50.0)
    assert flush_reason(p, now=100.0, window_start=0.0, cfg=CFG, predicted_s=30.0) == "size"
    p = pending(samples=11, deadline=FAR)
    assert flush_reason(p, now=100.0, window_start=100.0, cfg=CFG, predicted_s=0.0) == "size"


def test_one_sample_below_max_is_not_size():
    p = pending(samples=9, deadline=FAR)
    assert flush_reason(p, now=100.0, window_start=100.0, cfg=CFG, predicted_s=0.0) is None
    # with the deadline also due, the next rule answers
    p = pending(samples=9, deadline=100.0)
    assert flush_reason(p, now=100.0, window_start=100.0, cfg=CFG, predicted_s=0.0) == "deadline"


def test_deadline_minus_prediction_minus_margin_reached_flushes():
    # 125 - 20 - 5 == 100 <= now
    p = pending(samples=1, deadline=125.0)
    assert flush_reason(p, now=100.0, window_start=100.0, cfg=CFG, predicted_s=20.0) == "deadline"
    # already past
    p = pending(samples=1, deadline=110.0)
    assert flush_reason(p, now=100.0, window_start=100.0, cfg=CFG, predicted_s=20.0) == "deadline"
    # deadline rule beats the window rule
    p = pending(samples=1, deadline=125.0)
    assert flush_reason(p, now=100.0, window_start=0.0, cfg=CFG, predicted_s=20.0) == "deadline"


def test_deadline_just_outside_the_margin_waits():
    # 125.5 - 20 - 5 == 100.5 > now
    p = pending(samples=1, deadline=125.5)
    assert flush_reason(p, now=100.0, window_start=100.0, cfg=CFG, predicted_s=20.0) is None
    # the prediction counts: a shorter predicted batch leaves room
    p = pending(samples=1, deadline=125.0)
    assert flush_reason(p, now=100.0, window_start=100.0, cfg=CFG, predicted_s=19.5) is None


def test_no_deadline_is_never_a_deadline_flush():
    p = pending(samples=1, deadline=None)
    assert flush_reason(p, now=100.0, window_start=100.0, cfg=CFG, predicted_s=1e9) is None
    assert flush_reason(p, now=160.0, window_start=100.0, cfg=CFG, predicted_s=1e9) == "window"


def test_window_elapsed_flushes():
    p = pending(samples=1, deadline=FAR)
    assert flush_reason(p, now=100.0, window_start=40.0, cfg=CFG, predicted_s=1.0) == "window"
    assert flush_reason(p, now=500.0, window_start=40.0, cfg=CFG, predicted_s=1.0) == "window"


def test_window_not_elapsed_waits():
    p = pending(samples=1, deadline=FAR)
    assert flush_reason(p, now=100.0, window_start=40.5, cfg=CFG, predicted_s=1.0) is None
    assert flush_reason(p, now=100.0, window_start=100.0, cfg=CFG, predicted_s=1.0) is None


def test_update_estimate_first_observation_replaces_non_positive_previous():
    assert update_estimate(0.0, 12.5) == 12.5
    assert update_estimate(-3.0, 7.25) == 7.25


def test_update_estimate_is_an_ema_with_weight_point_three():
    assert update_estimate(10.0, 20.0) == pytest.approx(13.0, abs=1e-12)
    assert update_estimate(13.0, 3.0) == pytest.approx(10.0, abs=1e-12)
    assert update_estimate(100.0, 0.0) == pytest.approx(70.0, abs=1e-12)
    assert update_estimate(10.0, 20.0, weight=0.5) == 15.0


def test_client_urls_for_bind_addresses():
    from eraserd.client import base_url

    assert base_url("127.0.0.1", 8477) == "http://127.0.0.1:8477"
    assert base_url("0.0.0.0", 1) == "http://127.0.0.1:1"
    assert base_url("::", 2) == "http://[::1]:2"
    assert base_url("fe80::1", 3) == "http://[fe80::1]:3"


def test_retry_delay_doubles_up_to_the_cap():
    delays = [retry_delay(n, 5.0, 300.0) for n in range(0, 9)]
    assert delays == [0.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    assert retry_delay(10_000, 5.0, 300.0) == 300.0  # no overflow after a long outage


def test_the_policy_owns_the_window_and_rolls_it_on_the_first_tick_past_it():
    policy = FlushPolicy(CFG, start=100.0)
    assert policy.tick_s == 1.0 and policy.next_window_at == 160.0
    assert FlushPolicy(DaemonConfig(batch_window_s=2.0), 0.0).tick_s == 0.5
    quiet = Pending(requests=0, samples=0, oldest_created=None, earliest_deadline=None)
    step = policy.on_tick(quiet, 159.0, 0.0)
    assert step.reason is None and step.ended_window_s is None
    step = policy.on_tick(pending(), 160.5, 0.0)  # a window ends: flush what is pending
    assert step.reason == "window" and step.ended_window_s == 60.5
    assert policy.window_start == 160.5 and policy.next_window_at == 220.5
    # An empty window still ends on time; the next one starts at that tick.
    assert policy.on_tick(quiet, 221.0, 0.0).ended_window_s == 60.5
    assert policy.window_start == 221.0


def test_the_policy_flushes_on_size_at_submit_and_on_deadline_at_a_tick():
    policy = FlushPolicy(CFG, start=0.0)
    assert policy.on_submit(pending(samples=9)) is None
    assert policy.on_submit(pending(samples=10)) == "size"
    due = pending(deadline=50.0)
    assert policy.on_tick(due, 10.0, predicted_s=30.0).reason is None
    step = policy.on_tick(due, 15.0, predicted_s=30.0)  # 50 - 30 - 5 margin
    assert step.reason == "deadline" and step.ended_window_s is None
