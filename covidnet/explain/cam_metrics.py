"""Numbers that say what a class activation map shows: faithfulness, lesion localisation, shortcut share.

All maps are (H, W) arrays in [0, 1] at the network input's resolution (as ``covidnet.explain.cam`` returns
them). See docs/cam.md for the definitions and how to read them.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from pytorch_grad_cam.metrics.perturbation_confidence import PerturbationConfidenceMetric
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from torch import nn

from covidnet.models.predict import eval_mode


# --- regions (the lung field itself: covidnet/images/lungs.py) ----------------------------------------------------
def mass_share(cam: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's total mass that falls inside ``region``; NaN for an all-zero map."""
    total = float(cam.sum())
    return float((cam * region).sum() / total) if total > 0 else float("nan")


def pointing_hit(cam: np.ndarray, region: np.ndarray) -> bool:
    """Pointing game: is the map's maximum inside ``region``? An all-zero map points nowhere (a miss)."""
    if float(cam.max()) <= 0:
        return False
    return bool(region.reshape(-1)[int(np.argmax(cam))])


# --- faithfulness --------------------------------------------------------------------------------------
class ProbabilityTarget:
    """P(category) of a one-logit output: what faithfulness measures (maps are computed on the logit)."""

    def __init__(self, category: int):
        self.category = int(category)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(output.reshape(()))
        return p if self.category == 1 else 1 - p


ORDERS = ("morf", "lerf")  # most relevant first, least relevant first


class RemoveTopFraction:
    """Perturbation for pytorch-grad-cam's metrics: remove exactly ``fraction`` of the pixels, the most
    relevant first (``order="morf"``) or the least relevant first (``"lerf"``), and fill them by ROAD's
    noisy linear imputation.

    Ranking (not a percentile threshold) keeps the removed share fixed even when a map has many equal
    values (GradCAM is zero on much of the image); ties are broken in a seeded random order.
    """

    def __init__(self, fraction: float, seed: int = 0, order: str = "morf"):
        if not 0 < fraction < 1:
            raise ValueError(f"faithfulness fraction={fraction} must be in (0, 1).")
        if order not in ORDERS:
            raise ValueError(f"removal order={order!r}: choose morf (most relevant first) or lerf (least relevant first).")
        self.fraction, self.seed, self.order, self.imputer = fraction, seed, order, NoisyLinearImputer()

    def __call__(self, image: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
        flat = cam.numpy().reshape(-1)
        tie = np.random.default_rng(self.seed).random(flat.size)
        order = np.lexsort((tie, -flat if self.order == "morf" else flat))
        keep = np.ones(flat.size, np.float32)
        keep[order[: int(round(self.fraction * flat.size))]] = 0
        return self.imputer(image, torch.from_numpy(keep.reshape(cam.shape)))


def confidence_drop(model: nn.Module, x: torch.Tensor, cams: np.ndarray, categories, fraction: float = 0.2,
                    seed: int = 0, order: str = "morf") -> tuple[np.ndarray, np.ndarray]:
    """Per image: the drop in P(target), and in the target's signed logit, when ``fraction`` of the pixels
    are removed by the map, most relevant first (``order="morf"``) or least relevant first (``"lerf"``),
    and filled by ROAD's imputation.

    MoRF: larger = more faithful (the pixels the map marks matter). LeRF: smaller = more faithful (what
    the map calls irrelevant is). The logit drop still says something when the probability is saturated
    (P near 0 or 1). Compare with :func:`block_random_cams` (random maps of the same spatial structure).
    """
    metric = PerturbationConfidenceMetric(RemoveTopFraction(fraction, seed, order))
    targets = [ProbabilityTarget(c) for c in categories]
    with eval_mode(model):
        with torch.random.fork_rng(devices=[]), torch.inference_mode(False):
            torch.manual_seed(seed)  # the imputation noise
            x = x.detach().clone().to(next(model.parameters()).device)
            change, perturbed = metric(x, np.asarray(cams, dtype=np.float32), targets, model, return_visualization=True)
            with torch.no_grad():
                sign = torch.tensor([1.0 if int(c) == 1 else -1.0 for c in categories], device=x.device)
                logit_drop = (model(x).reshape(-1) - model(perturbed).reshape(-1)) * sign
    return -np.asarray(change, dtype=np.float64).reshape(len(x)), logit_drop.double().cpu().numpy()


def block_random_cams(shape: tuple[int, ...], stride: int = 32, seed: int = 0) -> np.ndarray:
    """Random maps with a CAM's spatial structure: uniform random values on the map's own grid (one cell
    per ``stride`` x ``stride`` input pixels, 4 x 4 at 128 px for layer4), upsampled bilinearly to the
    input like a GradCAM (pytorch-grad-cam resizes with cv2's bilinear interpolation).

    Removing their top fraction removes a few contiguous blobs, as the real map's top fraction does, but
    at random places: the chance level that a map must beat. Pixel-independent noise is no such control,
    since ROAD's imputation fills isolated pixels back from their neighbours (:func:`pixel_random_cams`).
    """
    n, h, w = shape
    rng = np.random.default_rng(seed)
    grid = rng.random((n, max(1, -(-h // stride)), max(1, -(-w // stride)))).astype(np.float32)
    return np.stack([cv2.resize(g, (w, h), interpolation=cv2.INTER_LINEAR) for g in grid]).astype(np.float32)


def pixel_random_cams(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Pixel-independent uniform random maps. Kept as a named reference only: removing isolated random
    pixels barely changes an image after ROAD's imputation, so almost any map beats it (docs/cam.md)."""
    return np.random.default_rng(seed).random(shape).astype(np.float32)


# --- summaries -------------------------------------------------------------------------------------------
def summarize(values) -> dict:
    """Mean, standard error and count of the finite values (NaN marks an undefined per-image number)."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"mean": None, "sem": None, "n": 0}
    sem = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None
    return {"mean": round(float(v.mean()), 4), "sem": round(sem, 4) if sem is not None else None, "n": int(len(v))}
