"""A small COVID-CT look-alike in the official layout, made at test time.

COVID images (label 1) carry a bright blob at a random position; non-COVID images do not. Modes and
sizes are mixed like the real data (RGB, RGBA, L; landscape and portrait).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from covidnet.dataset import CLASSES, SPLITS, image_dir, split_file

MODES = ("RGB", "RGBA", "L")
SIZES = ((96, 80), (120, 140), (64, 64), (150, 110))


def blob_image(rng: np.random.Generator, covid: bool, size: tuple[int, int]) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Grey uint8 image (H, W) and, for COVID, the blob centre as fractions (y, x) of the image."""
    w, h = size
    img = rng.normal(70, 20, (h, w))
    centre = None
    if covid:
        cy, cx = rng.uniform(0.2, 0.8, 2)
        yy, xx = np.mgrid[0:h, 0:w]
        r = 0.1 * min(h, w)
        img += 170 * np.exp(-(((yy - cy * h) ** 2) + ((xx - cx * w) ** 2)) / (2 * r**2))
        centre = (float(cy), float(cx))
    return np.clip(img, 0, 255).astype(np.uint8), centre


def make_dataset(root: Path, counts: dict[str, int] | None = None, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Write the dataset under ``root``; ``counts`` is images per class per split. Returns blob centres by file name."""
    counts = counts or {"train": 24, "val": 8, "test": 8}
    rng = np.random.default_rng(seed)
    centres: dict[str, tuple[float, float]] = {}
    k = 0
    for label, *_ in CLASSES:
        image_dir(root, label).mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            names = []
            for _ in range(counts[split]):
                size = SIZES[k % len(SIZES)]
                mode = MODES[k % len(MODES)]
                grey, centre = blob_image(rng, label == 1, size)
                name = f"{'covid' if label else 'normal'}_{split}_{k}.{'jpg' if mode == 'RGB' and k % 2 else 'png'}"
                im = Image.fromarray(grey, "L").convert(mode)
                im.save(image_dir(root, label) / name, quality=95) if name.endswith("jpg") else im.save(image_dir(root, label) / name)
                if centre:
                    centres[name] = centre
                names.append(name)
                k += 1
            path = split_file(root, label, split)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(names) + "\n")
    return centres
