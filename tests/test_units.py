"""Durations and rates (``eraserd/units.py``): the one parser behind ``eraserd plan``,
``eraserd simulate`` and ``eraserctl submit-deletion --deadline``."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from eraserd import units
from eraserd.ctl import parse_deadline
from eraserd.errors import InvalidInputError

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`


@pytest.mark.parametrize(
    "text,per_second",
    [
        ("0.1", 0.1),
        ("0.1/s", 0.1),
        ("5/h", 5 / 3600),
        ("200/d", 200 / 86400),
        ("3/m", 3 / 60),
        ("3 / min", 3 / 60),
        ("14/w", 2 / 86400),
        ("2e-3", 0.002),
        ("200/D", 200 / 86400),
    ],
)
def test_parse_rate(text, per_second):
    assert units.parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("259200", 259200.0),
        ("72h", 259200.0),
        ("3d", 259200.0),
        ("30m", 1800.0),
        ("45s", 45.0),
        ("1.5h", 5400.0),
        ("1w", 604800.0),
        (" 90 min ", 5400.0),
    ],
)
def test_parse_duration(text, seconds):
    assert units.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "abc", "-1/h", "0", "0/d", "5/y", "5/", "inf", "nan", "1/h/d"]
)
def test_parse_rate_refuses(text):
    with pytest.raises(ValueError, match="rate"):
        units.parse_rate(text)


@pytest.mark.parametrize("text", ["", "h", "0", "0h", "-3h", "3x", "3 hours", "inf", "1e999"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError, match="duration"):
        units.parse_duration(text)


def test_format_duration():
    assert units.format_duration(45) == "45s"
    assert units.format_duration(3600) == "1h"
    assert units.format_duration(90061) == "1d 1h 1m"
    assert units.format_duration(259140) == "2d 23h 59m"


@pytest.mark.parametrize("text", ["72h", "3d", "1w", "45s", "30m", "259200", " 90 min "])
def test_a_deadline_reads_durations_as_plan_does(text):
    now = 1_700_000_000.0
    at = datetime.fromisoformat(parse_deadline(text, now))
    assert at.timestamp() == pytest.approx(now + units.parse_duration(text))
    assert at.tzinfo is not None


def test_a_deadline_reads_iso_times_and_names_what_it_wants():
    assert (
        parse_deadline("2030-01-02T03:04:05", 0.0)
        == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc).isoformat()
    )
    with pytest.raises(InvalidInputError, match="expected a duration like 72h or 1w, or an ISO"):
        parse_deadline("soon", 0.0)
