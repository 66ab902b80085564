"""Generate a handful of small, varied images (shapes, gradients, text) for the demo, tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SAMPLE_SIZES = [(64, 64), (320, 240), (256, 512), (640, 480), (1024, 768)]


def make_image(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic picture: a colour gradient with a few shapes and a line of text."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    base = rng.uniform(0, 255, size=3)
    pixels = (base * (0.4 + 0.6 * x) + (255 - base) * 0.5 * y) % 256
    image = Image.fromarray(np.broadcast_to(pixels, (height, width, 3)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        x1, y1 = x0 + int(rng.integers(8, width // 4 + 9)), y0 + int(rng.integers(8, height // 4 + 9))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    draw.text((4, 4), f"vlray #{seed}", fill=(255, 255, 255))
    return image


def make_sample_images(out_dir: str | Path, sizes: list[tuple[int, int]] | None = None) -> list[Path]:
    """Write one PNG (even index) or JPEG (odd index) per size; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (width, height) in enumerate(sizes or SAMPLE_SIZES):
        path = out / f"sample_{i}_{width}x{height}.{'png' if i % 2 == 0 else 'jpg'}"
        make_image(width, height, seed=i).save(path)
        paths.append(path)
    return paths
