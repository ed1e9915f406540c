"""Lung-field segmentation of one 2D CT slice from any source (paper figure crops, windowed DICOM).

Classical, no learned weights: dark regions inside the body, cleaned by morphology. Chosen by measurement
over the alternatives (docs/lungs.md): it needs no training data of the target source, and the figure crops
of COVID-CT (frames, text, arrows, per-paper windowing) are nothing like any lung-mask training set here.

Steps, at a working resolution whose longer side is ``WORK_SIZE`` pixels:
1. smooth (Gaussian), threshold at Otsu's level: ``bright`` (soft tissue, bone, text) vs ``dark`` (air).
2. body = convex hull of the largest bright region after an opening that removes thin lines, letters and
   arrows; the hull keeps the dark lungs inside even when a tight crop leaves the body's outline open.
   Steps 1-2 run twice, the second time with the threshold computed inside the first hull (a scanner's
   circular field of view, grey inside and black outside, would otherwise pass for the body).
3. lung candidates = dark pixels inside the body hull, opened (cuts thin bridges to outside air) and
   labelled; components touching the image border with a large share of their outline are outside air,
   not lung. The largest component and any other of at least ``SECOND_LUNG`` of its size are kept.
4. each kept lung is closed with a disk and its holes filled, so vessels and lesions (brighter than
   aerated lung, also touching the pleura) stay inside the field.
A slice where this finds nothing, or less than ``MIN_AREA`` of the image, is a failure: ``None``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import convex_hull_image, disk

WORK_SIZE = 256
MIN_AREA = 0.05  # a lung field under 5 % of the slice counts as "no lung found"
SECOND_LUNG = 0.15  # a second component is a lung if at least this share of the largest one
MAX_LUNGS = 2
BODY_PART = 0.1  # bright components of at least this share of the largest one are part of the body
OUTSIDE_HULL = 0.2  # a border-touching dark component with less than this share inside the body hull is air
CLOSE_DIVISOR = 24  # lungs are closed with a disk of radius min(size) / CLOSE_DIVISOR
SURROUNDS = 0.8  # a border-touching dark component whose hull holds this share of the body surrounds it
HULL = False  # replace each lung by its convex hull


def _resize(a: np.ndarray, shape: tuple[int, int], resample) -> np.ndarray:
    if a.shape == shape:
        return a
    img = Image.fromarray(a.astype(np.float32), mode="F")
    return np.asarray(img.resize((shape[1], shape[0]), resample), dtype=np.float32)


def _body(bright: np.ndarray) -> np.ndarray | None:
    """The bright components of at least ``BODY_PART`` of the largest one: a tight crop splits the body into
    chest wall bands and the mediastinum, and all of them bound the lungs."""
    labels, n = ndimage.label(bright)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(bright, labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero(sizes >= BODY_PART * sizes.max()) + 1
    return np.isin(labels, keep)


def _sides_touched(component: np.ndarray) -> int:
    """Image sides the component reaches, within a band of 1/64 of the size (a thin frame drawn around a
    figure must not hide that the air around the body reaches the edge)."""
    m = max(2, round(min(component.shape) / 64))
    return int(component[:m].any()) + int(component[-m:].any()) + int(component[:, :m].any()) + int(component[:, -m:].any())


def _is_outside_air(component: np.ndarray, hull: np.ndarray, body: np.ndarray) -> bool:
    """Air around the body, not lung: it touches the image border, and it either surrounds the body (its
    convex hull holds most of the body's tissue) or lies almost wholly outside the body's hull. A lung
    cut by a tight crop also touches the border, but its hull holds only a part of the body."""
    if _sides_touched(component) == 0:
        return False
    if float((component & hull).sum()) < OUTSIDE_HULL * float(component.sum()):
        return True
    return float((convex_hull_image(component) & body).sum()) > SURROUNDS * float(body.sum())


def segment_work(g: np.ndarray) -> np.ndarray | None:
    """Lung mask at the working resolution (``g`` float grey in [0, 1]); ``None`` when no lung is found."""
    size = min(g.shape)
    g = ndimage.gaussian_filter(g, sigma=max(0.5, size / 256))
    if float(g.max() - g.min()) < 1e-3:
        return None
    # Two passes: the first threshold may split the scanner's field of view (grey air inside a black
    # circle) rather than body from air; inside the first body hull the second splits tissue from air.
    region = np.ones(g.shape, bool)
    for _ in range(2):
        values = g[region]
        if float(values.max() - values.min()) < 1e-3:
            return None
        t = threshold_otsu(values)
        bright = ndimage.binary_opening((g > t) & region, structure=disk(max(1, round(size / 64))))
        body = _body(bright)
        if body is None:
            return None
        region = convex_hull_image(body)
    hull = region
    dark = g <= t
    dark = ndimage.binary_opening(dark, structure=disk(max(1, round(size / 100))))
    labels, n = ndimage.label(dark)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(dark, labels, index=np.arange(1, n + 1))
    candidates = []
    for k in np.argsort(-sizes):
        comp = labels == (k + 1)
        if _is_outside_air(comp, hull, body):
            continue
        candidates.append((float(sizes[k]), comp))
    if not candidates:
        return None
    largest = candidates[0][0]
    lungs = np.zeros_like(dark)
    close = disk(max(1, round(size / CLOSE_DIVISOR)))
    for area, comp in candidates[:MAX_LUNGS]:
        if area < SECOND_LUNG * largest:
            break
        # pad so the closing does not clip at the image edge
        r = close.shape[0]
        padded = np.pad(comp, r)
        closed = ndimage.binary_closing(padded, structure=close)[r:-r, r:-r]
        lung = ndimage.binary_fill_holes(closed | comp)
        if HULL:
            lung = convex_hull_image(lung)
        lungs |= lung
    return lungs


def segment_lungs(grey: np.ndarray) -> np.ndarray | None:
    """Boolean lung mask of the slice's shape, or ``None`` when no lung is found (or under ``MIN_AREA``).

    ``grey`` is a float grey HxW image in [0, 1], as every reader in covidnet gives it.
    """
    grey = np.asarray(grey, dtype=np.float32)
    if grey.ndim != 2:
        raise ValueError(f"segment_lungs expects a grey HxW image, got shape {grey.shape}.")
    h, w = grey.shape
    scale = WORK_SIZE / max(h, w)
    work_shape = (max(8, round(h * scale)), max(8, round(w * scale)))
    g = _resize(np.clip(grey, 0, 1), work_shape, Image.BILINEAR)
    mask = segment_work(g)
    if mask is None:
        return None
    mask = _resize(mask.astype(np.float32), (h, w), Image.BILINEAR) >= 0.5
    if mask.mean() < MIN_AREA:
        return None
    return mask


def bounding_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom/right exclusive: the mask's box grown by ``margin`` of its size
    on each side, clipped to the image."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    dy, dx = round(margin * (bottom - top)), round(margin * (right - left))
    h, w = mask.shape
    return max(0, top - dy), min(h, bottom + dy), max(0, left - dx), min(w, right + dx)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / total if total else 1.0
