"""A small COVID-CT look-alike in the official layout, made at test time.

COVID images (label 1) carry a bright blob at a random position; non-COVID images do not. Modes and
sizes are mixed like the real data (RGB, RGBA, L; landscape and portrait). ``kind="chest"`` draws axial
slices instead (body, two dark lungs, a frame and a caption outside them; COVID: a bright opacity in a
lung), in which covidnet.images.lungs finds the lung field, so ``data.field`` and ``data.intensity`` change what
the network sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from covidnet.images.covid_ct_layout import CLASSES, SPLITS, image_dir, split_file

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


CHEST_SIZES = ((240, 200), (170, 190), (180, 180), (250, 210))  # (w, h) where covidnet.images.lungs finds these lungs


def chest_image(rng: np.random.Generator, covid: bool, size: tuple[int, int]) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Grey uint8 axial slice (H, W) with lungs, a frame and a caption; for COVID, an opacity's centre (y, x)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = h * rng.uniform(0.45, 0.55), w * rng.uniform(0.45, 0.55)
    grey = np.full((h, w), 0.03)
    grey[((yy - cy) / (0.36 * h)) ** 2 + ((xx - cx) / (0.42 * w)) ** 2 <= 1] = rng.uniform(0.55, 0.75)
    lungs = np.zeros((h, w), bool)
    for side in (-1, 1):
        lungs |= ((yy - cy) / (0.24 * h)) ** 2 + ((xx - cx - side * 0.17 * w) / (0.13 * w)) ** 2 <= 1
    grey[lungs] = rng.uniform(0.08, 0.16)
    centre = None
    if covid:
        y, x = np.argwhere(lungs)[rng.integers(lungs.sum())]
        r = 0.05 * min(h, w)
        grey += 0.4 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * r**2)) * lungs
        centre = (float(y / h), float(x / w))
    grey += rng.normal(0, 0.02, grey.shape)
    grey[:2, :] = grey[-2:, :] = grey[:, :2] = grey[:, -2:] = 1.0  # a figure frame
    grey[8:20, 10:50:6] = grey[8:10, 10:50] = 1.0  # a caption
    return (np.clip(grey, 0, 1) * 255).astype(np.uint8), centre


def make_dataset(root: Path, counts: dict[str, int] | None = None, seed: int = 0, kind: str = "blob") -> dict[str, tuple[float, float]]:
    """Write the dataset under ``root``; ``counts`` is images per class per split; ``kind`` blob or chest.
    Returns blob (opacity) centres by file name."""
    draw, sizes = {"blob": (blob_image, SIZES), "chest": (chest_image, CHEST_SIZES)}[kind]
    counts = counts or {"train": 24, "val": 8, "test": 8}
    rng = np.random.default_rng(seed)
    centres: dict[str, tuple[float, float]] = {}
    k = 0
    for label, *_ in CLASSES:
        image_dir(root, label).mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            names = []
            for _ in range(counts[split]):
                size = sizes[k % len(sizes)]
                mode = MODES[k % len(MODES)]
                grey, centre = draw(rng, label == 1, size)
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
