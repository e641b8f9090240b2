"""Private data sources: the builtin digits or faces, an image folder, or a manifest CSV.

A source yields ``SourceSample`` records lazily; nothing here writes to disk. Validation that
needs the bytes (readable image?) happens in the store's ingest, which is all-or-nothing.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..config import BUILTIN_DIGITS, BUILTIN_LFW, DataConfig
from ..errors import DataError

DIGITS_PER_SUBJECT = 3
"""The builtin digits carry synthetic subjects: consecutive samples, three per subject."""


@dataclass(frozen=True)
class SourceSample:
    sample_id: str
    subject_id: str | None
    label: str
    read: Callable[[], bytes]
    origin: str
    """Where the bytes come from, for error messages (a path, or ``digits[i]``)."""


@dataclass(frozen=True)
class Source:
    description: str
    classes: tuple[str, ...]
    samples: Callable[[], Iterator[SourceSample]]


def open_source(cfg: DataConfig) -> Source:
    if cfg.source == BUILTIN_DIGITS:
        return _digits(cfg)
    if cfg.source == BUILTIN_LFW:
        return _lfw(cfg)
    if cfg.source.startswith("builtin:"):
        raise DataError(
            f"data.source: unknown builtin {cfg.source!r} (known: {BUILTIN_DIGITS}, {BUILTIN_LFW})"
        )
    path = Path(cfg.source)
    if not path.exists():
        raise DataError(f"data.source: path does not exist: {path}")
    if path.is_dir():
        return _folder(path, cfg)
    if path.suffix.lower() == ".csv":
        return _manifest(path, cfg)
    raise DataError(f"data.source: expected a folder or a .csv manifest, got {path}")


def _digits(cfg: DataConfig) -> Source:
    from sklearn.datasets import load_digits

    classes = tuple(str(i) for i in range(10))
    if cfg.classes is not None and tuple(cfg.classes) != classes:
        raise DataError("data.classes: builtin:digits has the classes 0..9 and no others")

    def samples() -> Iterator[SourceSample]:
        digits = load_digits()
        width = len(str(len(digits.target) - 1))
        swidth = len(str((len(digits.target) - 1) // DIGITS_PER_SUBJECT))
        for i, (image, target) in enumerate(zip(digits.images, digits.target)):
            yield SourceSample(
                sample_id=f"digits-{i:0{width}d}",
                subject_id=f"subject-{i // DIGITS_PER_SUBJECT:0{swidth}d}",
                label=str(int(target)),
                read=functools.partial(_digit_png, image),
                origin=f"digits[{i}]",
            )

    return Source("builtin:digits (scikit-learn load_digits)", classes, samples)


LFW_CLASSES = ("face", "non-face")


def _lfw(cfg: DataConfig) -> Source:
    """scikit-image's ``data.lfw_subset()``: 200 real 25 x 25 grayscale crops, the first 100
    faces from Labeled Faces in the Wild and the other 100 not faces. Each is its own
    subject (the subset names no people). Needs scikit-image."""
    try:
        from skimage import data as skdata
    except ImportError:
        raise DataError(
            "data.source: builtin:lfw needs scikit-image (pip install scikit-image)"
        ) from None
    if cfg.classes is not None and tuple(cfg.classes) != LFW_CLASSES:
        raise DataError("data.classes: builtin:lfw has the classes face and non-face only")

    def samples() -> Iterator[SourceSample]:
        images = skdata.lfw_subset()  # float64 in [0, 1], a plain .npy (no pickle)
        for i, image in enumerate(images):
            yield SourceSample(
                sample_id=f"lfw-{i:03d}",
                subject_id=None,
                label=LFW_CLASSES[0] if i < len(images) // 2 else LFW_CLASSES[1],
                read=functools.partial(_gray_png, image, 1.0),
                origin=f"lfw_subset[{i}]",
            )

    return Source("builtin:lfw (scikit-image data.lfw_subset)", LFW_CLASSES, samples)


def _digit_png(image) -> bytes:
    return _gray_png(image, 16.0)


def _gray_png(image, top: float) -> bytes:
    """A grayscale PNG of an array whose values run from 0 to ``top``."""
    import numpy as np
    from PIL import Image

    pixels = np.clip(np.rint(image * (255.0 / top)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _folder(root: Path, cfg: DataConfig) -> Source:
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and _visible(p))
    if loose:
        raise DataError(
            f"{root}: files must sit in one subfolder per class; found {loose[0]!r} at the top"
        )
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and _visible(p))
    if not found:
        raise DataError(f"{root}: no class subfolders")
    if cfg.classes is not None:
        unknown = sorted(set(found) - set(cfg.classes))
        if unknown:
            raise DataError(f"{root}: unknown label(s) {unknown} (data.classes: {cfg.classes})")
        classes = tuple(cfg.classes)
    else:
        classes = tuple(found)

    def samples() -> Iterator[SourceSample]:
        for label in found:
            for path in sorted((root / label).rglob("*")):
                rel = path.relative_to(root).as_posix()
                if not path.is_file() or any(part.startswith(".") for part in rel.split("/")):
                    continue
                yield SourceSample(rel, None, label, path.read_bytes, str(path))

    return Source(f"image folder {root}", classes, samples)


_REQUIRED = ("sample_id", "path", "label")


def _manifest(path: Path, cfg: DataConfig) -> Source:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read manifest: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise DataError(
            f"{path}: manifest header lacks column(s) {missing}; "
            "expected sample_id,path,label[,subject_id]"
        )
    extra = sorted(set(header) - set(_REQUIRED) - {"subject_id"})
    if extra:
        raise DataError(f"{path}: unknown manifest column(s) {extra}")
    rows = []
    for lineno, row in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        for col in _REQUIRED:
            if not row.get(col):
                raise DataError(f"{path}:{lineno}: empty {col}")
        rows.append((lineno, row))
    labels = sorted({row["label"] for _, row in rows})
    if cfg.classes is not None:
        for lineno, row in rows:
            if row["label"] not in cfg.classes:
                raise DataError(
                    f"{path}:{lineno}: unknown label {row['label']!r} "
                    f"(data.classes: {list(cfg.classes)})"
                )
        classes = tuple(cfg.classes)
    else:
        classes = tuple(labels)
    base = path.parent

    def samples() -> Iterator[SourceSample]:
        for lineno, row in rows:
            file = Path(row["path"])
            file = file if file.is_absolute() else base / file
            yield SourceSample(
                row["sample_id"],
                row.get("subject_id") or None,
                row["label"],
                file.read_bytes,
                f"{path}:{lineno} ({file})",
            )

    return Source(f"manifest {path}", classes, samples)
