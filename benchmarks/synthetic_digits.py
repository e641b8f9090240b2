"""A generated image folder of real-looking digits, for scale benchmarks.

Each image starts from one of scikit-learn's 1,797 real 8x8 digits, upscaled to 48x48, then
gets a seeded random rotation, scale, shear and shift, stroke thickness, ink and paper
colours, blur and noise. The folder has one subfolder per class (``0`` .. ``9``), as
``data.source`` expects. The same ``(n, seed)`` always writes the same bytes, and a folder
of n images holds the first n images of any larger one.

    python benchmarks/synthetic_digits.py OUT_DIR --n 20000
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from sklearn.datasets import load_digits

SIDE = 48


def render(base: np.ndarray, rng: np.random.Generator) -> bytes:
    """One PNG of a distorted, coloured digit."""
    glyph = Image.fromarray(np.clip(base * (255.0 / 16.0), 0, 255).astype(np.uint8), mode="L")
    glyph = glyph.resize((SIDE, SIDE), Image.Resampling.BICUBIC)
    angle = rng.uniform(-18, 18)
    scale = rng.uniform(0.75, 1.15)
    shear = rng.uniform(-0.25, 0.25)
    dx, dy = rng.uniform(-5, 5, size=2)
    c = SIDE / 2
    # Inverse affine map about the centre: output pixel -> input pixel.
    a = np.deg2rad(angle)
    m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.array(
        [[1.0, shear], [0.0, 1.0]]
    )
    inv = np.linalg.inv(m * scale)
    off = np.array([c, c]) - inv @ np.array([c + dx, c + dy])
    glyph = glyph.transform(
        (SIDE, SIDE),
        Image.Transform.AFFINE,
        (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1]),
        resample=Image.Resampling.BILINEAR,
    )
    width = int(rng.integers(0, 3))
    if width:
        glyph = glyph.filter(ImageFilter.MaxFilter(2 * width + 1))
    alpha = np.asarray(glyph, dtype=np.float64) / 255.0
    paper = rng.uniform(150, 255, size=3) if rng.random() < 0.7 else rng.uniform(0, 110, size=3)
    ink = rng.uniform(0, 255, size=3)
    while np.abs(ink - paper).sum() < 180:
        ink = rng.uniform(0, 255, size=3)
    pixels = paper * (1 - alpha[..., None]) + ink * alpha[..., None]
    pixels += rng.normal(0, rng.uniform(0, 12), size=pixels.shape)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    blur = rng.uniform(0, 1.2)
    if blur > 0.3:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_folder(root: Path, n: int, seed: int = 0) -> Path:
    """Write ``n`` images into ``root/<label>/img-NNNNNN.png`` (existing files are kept)."""
    digits = load_digits()
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        k = int(rng.integers(len(digits.target)))
        label = int(digits.target[k])
        path = root / str(label) / f"img-{i:06d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(render(digits.images[k], rng))
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    make_folder(args.out, args.n, args.seed)
    print(f"{args.n} images in {args.out}")


if __name__ == "__main__":
    main()
