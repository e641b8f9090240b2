"""Decoding stored bytes into the one canonical, non-augmented view."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


class ImageDecodeError(ValueError):
    pass


def canonical_view(data: bytes, size: int) -> torch.Tensor:
    """RGB uint8 tensor [3, size, size]: shorter side resized to ``size``, then centre-cropped.

    PIL's resampling is deterministic, so the view is a pure function of (bytes, size).
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except UnidentifiedImageError:
        raise ImageDecodeError("unrecognised image format") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(str(exc) or type(exc).__name__) from None
    w, h = rgb.size
    if w < 1 or h < 1:
        raise ImageDecodeError("empty image")
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    rgb = rgb.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    rgb = rgb.crop((left, top, left + size, top + size))
    arr = np.array(rgb, dtype=np.uint8, copy=True)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def check_readable(data: bytes) -> None:
    """Raise ``ImageDecodeError`` unless ``data`` decodes as an image."""
    canonical_view(data, 8)
