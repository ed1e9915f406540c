"""Running a trained model for its outputs: eval mode (restored afterwards) and P(COVID) per image.

The one home of prediction: training (predictions_test.csv), the CAM callback, visualize and the CAM
metrics all get their probabilities, and their eval mode, here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; afterwards in the train/eval mode it had (also on errors)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def on_images(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` taking images inside the block, also a model that callbacks/frozen_features.py left taking its cached
    frozen features (``CovidClassifier.take_features``): what a freshly trained model is scored on images with."""
    taking = bool(getattr(model, "feature_inputs", False))
    if taking:
        model.take_features(False)
    try:
        yield model
    finally:
        if taking:
            model.take_features(True)


def logits_of(model: nn.Module):
    """How to get logits of the batches the model's loaders serve: ``CovidClassifier.logits`` (images, or cached
    frozen features while callbacks/frozen_features.py serves them), else the module itself."""
    return getattr(model, "logits", model)


@torch.no_grad()
def predict_batch(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """P(COVID) per item of ``x`` (float32, on the CPU); the model runs in eval mode, its mode is restored."""
    with eval_mode(model):
        logits = logits_of(model)(x.to(next(model.parameters()).device)).reshape(len(x))
        return torch.sigmoid(logits).float().cpu()


@torch.inference_mode()
def predict_probs(model: nn.Module, loader: DataLoader, device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(P(COVID), labels)`` over ``loader`` in its order; the model's train/eval mode is restored."""
    probs, labels = [], []
    for x, y in loader:
        probs.append(predict_batch(model, x.to(device) if device is not None else x))
        labels.append(y.cpu())
    return torch.cat(probs).numpy(), torch.cat(labels).numpy().astype(int)
