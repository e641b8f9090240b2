"""Id files for ``eraserd forget`` and ``eraserctl submit-deletion``."""

from __future__ import annotations

from pathlib import Path

from .errors import EraserdError


def read_ids(path: Path | None) -> tuple[list[str], list[str]]:
    """Lines ``sample:ID`` / ``subject:ID`` / bare ``ID`` (a sample id); ``#`` comments."""
    samples, subjects = [], []
    if path is None:
        return samples, subjects
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise EraserdError(f"--from-file: cannot read {path}: {exc.strerror}") from None
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kind, sep, ident = line.partition(":")
        if sep and kind in ("sample", "subject"):
            (samples if kind == "sample" else subjects).append(ident.strip())
        else:
            samples.append(line)
    return samples, subjects
