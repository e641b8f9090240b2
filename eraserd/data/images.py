"""Decoding stored bytes into the one canonical, non-augmented view.

Pillow's ``Image.open`` is lazy: it reads the header (format, width, height) and decodes no
pixel until ``load()``. ``check_image_limits`` uses that to refuse a hostile upload (a
20 KB 13000x13000 PNG, a 128-byte 50000x1 PNG) before it costs any memory or CPU. Pillow's
decompression-bomb warning is turned into an error here, so an oversized image is refused
cleanly instead of decoded with a warning.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

API_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
"""Formats ``check_image_limits`` accepts by default (uploads to ``/v1/predict``)."""


class ImageDecodeError(ValueError):
    pass


class ImageTooLarge(ImageDecodeError):
    """The header declares an image over a limit: ``limit`` is ``"pixels"`` or ``"aspect"``."""

    def __init__(self, limit: str, detail: str):
        super().__init__(f"image {detail}")
        self.limit, self.detail = limit, detail


_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)


def _open(data: bytes, formats: tuple[str, ...] | None = None) -> Image.Image:
    """``Image.open`` (header only), with Pillow's decompression-bomb warning as an error.

    ``catch_warnings`` is process-wide; should two threads interleave, the warning may be
    emitted instead of raised, and the explicit size checks of the callers still refuse."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=list(formats) if formats else None)


def _bomb_detail(exc: Exception) -> str:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{found.group(1)} pixels" if found else "more pixels than Pillow decodes safely"
    return f"has {pixels}"


def check_image_limits(
    data: bytes, max_pixels: int, max_aspect: float, formats: tuple[str, ...] = API_FORMATS
) -> tuple[int, int]:
    """``(width, height)`` from the header, or ``ImageTooLarge``/``ImageDecodeError``.

    Decodes no pixel: the one check that an untrusted image is small enough to decode."""
    try:
        img = _open(data, formats)
    except _BOMB as exc:
        raise ImageTooLarge("pixels", _bomb_detail(exc)) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"unrecognised image format; accepted: {', '.join(formats)}"
        ) from None
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(str(exc) or type(exc).__name__) from None
    with img:
        w, h = img.size
    if w < 1 or h < 1:
        raise ImageDecodeError("empty image")
    if w * h > max_pixels:
        raise ImageTooLarge("pixels", f"is {w}x{h} = {w * h} pixels")
    if max(w, h) > max_aspect * min(w, h):
        raise ImageTooLarge("aspect", f"is {w}x{h}, an aspect ratio of {max(w, h) / min(w, h):g}")
    return w, h


def canonical_view(data: bytes, size: int) -> torch.Tensor:
    """RGB uint8 tensor [3, size, size]: shorter side resized to ``size``, then centre-cropped.

    PIL's resampling is deterministic, so the view is a pure function of (bytes, size).
    An image over Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) is refused
    from its header, never decoded.
    """
    try:
        with _open(data) as img:
            w, h = img.size
            bomb = Image.MAX_IMAGE_PIXELS
            if bomb is not None and w * h > bomb:
                raise ImageDecodeError(
                    f"{w}x{h} image over the decompression-bomb limit of {bomb} pixels"
                )
            img.load()
            rgb = img.convert("RGB")
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("unrecognised image format") from None
    except _BOMB as exc:
        raise ImageDecodeError(f"decompression bomb: {exc}") from None
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(str(exc) or type(exc).__name__) from None
    w, h = rgb.size
    if w < 1 or h < 1:
        raise ImageDecodeError("empty image")
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    rgb = rgb.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    rgb = rgb.crop((left, top, left + size, top + size))
    arr = np.array(rgb, dtype=np.uint8, copy=True)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def check_readable(data: bytes) -> None:
    """Raise ``ImageDecodeError`` unless ``data`` decodes as an image."""
    canonical_view(data, 8)
