"""Id files for ``eraserd forget`` and ``eraserctl submit-deletion``, and the rule every id
(from a file or the HTTP API) must meet."""

from __future__ import annotations

from pathlib import Path

from .errors import EraserdError

MAX_ID_CHARS = 1000

BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Bidirectional controls: they reorder how an id (and whatever follows it) is displayed."""


def id_problem(ident: str, max_chars: int = MAX_ID_CHARS) -> str | None:
    """Why ``ident`` is not an acceptable id, or None.

    An id is non-empty printable text (``str.isprintable``: no control, format, bidi, line or
    paragraph separator, nor any space but U+0020), with an explicit check of the bidi
    controls. The message names the offending code point, never echoes the id."""
    if not ident:
        return "must not be empty"
    if len(ident) > max_chars:
        return f"must be at most {max_chars} characters"
    for ch in ident:
        if ch in BIDI or not ch.isprintable():
            return (
                f"must be printable text: holds U+{ord(ch):04X} "
                "(a control, bidi, line-separator or other unprintable character)"
            )
    return None


def read_ids(path: Path | None) -> tuple[list[str], list[str]]:
    """Lines ``sample:ID`` / ``subject:ID`` / bare ``ID`` (a sample id); ``#`` comments.

    UTF-8 (a BOM is allowed); lines end at ``\\n`` only, so a U+2028 or U+0085 inside an id is
    refused, naming the line, instead of silently splitting it in two."""
    samples: list[str] = []
    subjects: list[str] = []
    if path is None:
        return samples, subjects
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise EraserdError(f"--from-file: cannot read {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        lineno = raw[: exc.start].count(b"\n") + 1
        raise EraserdError(f"--from-file: {path} line {lineno}: not UTF-8 text") from None
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        kind, sep, ident = line.partition(":")
        if sep and kind in ("sample", "subject"):
            ident, into = ident.strip(" \t"), samples if kind == "sample" else subjects
        else:
            ident, into = line, samples
        problem = id_problem(ident)
        if problem is not None:
            raise EraserdError(f"--from-file: {path} line {number}: the id {problem}")
        into.append(ident)
    return samples, subjects
