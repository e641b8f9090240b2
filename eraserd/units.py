"""Durations and rates as operators write them: one parser for every command.

``eraserd plan --deadline``, ``eraserd simulate --rate`` and ``eraserctl submit-deletion
--deadline`` all read ``45s``, ``30m``, ``72h``, ``3d``, ``1w`` or plain seconds here. Pure,
standard library only (``eraserctl`` imports it).
"""

from __future__ import annotations

import math
import re

DAY_S = 86400.0

_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": DAY_S, "w": 7 * DAY_S}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-z]*)\s*$")
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:/\s*([a-z]+))?\s*$")


def parse_duration(text: str) -> float:
    """Seconds from ``"259200"``, ``"45s"``, ``"30m"``, ``"72h"``, ``"3d"`` or ``"1w"``."""
    match = _DURATION.match(str(text).lower())
    if not match or (match.group(2) and match.group(2) not in _UNITS):
        raise ValueError(f"{text!r} is not a duration: use seconds or a number with s, m, h, d, w")
    value = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{text!r}: a duration must be positive and finite")
    return value


def parse_rate(text: str) -> float:
    """Deletions per second from ``"0.1"``, ``"0.1/s"``, ``"5/h"``, ``"200/d"`` or ``"3/w"``."""
    match = _RATE.match(str(text).lower())
    if not match or (match.group(2) and match.group(2) not in _UNITS):
        raise ValueError(
            f"{text!r} is not a rate: use deletions per second or a number with /s, /m, /h, /d, /w"
        )
    value = float(match.group(1)) / _UNITS[match.group(2) or "s"]
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{text!r}: a rate must be positive and finite")
    return value


def format_duration(seconds: float) -> str:
    """``90061`` -> ``"1d 1h 1m"``: up to three units, rounded down to the last one."""
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 60:
        return f"{seconds:.3g}s"
    parts, rest = [], round(seconds)
    for name, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{name}")
            rest %= size
    return " ".join(parts[:3])
