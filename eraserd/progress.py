"""Progress bars on stderr for long work; silent when stderr is not a terminal or when off."""

from __future__ import annotations

import sys

from tqdm import tqdm

_enabled = True


def set_enabled(on: bool) -> None:
    global _enabled
    _enabled = on


def bar(total: float | None, desc: str, unit: str = "it") -> tqdm:
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        disable=(not _enabled) or total == 0 or None,
        leave=False,
    )
