"""Per-image predictions of a trained model, for reports and figures."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader


@torch.inference_mode()
def predict_probs(model: torch.nn.Module, loader: DataLoader, device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(P(COVID), labels)`` over ``loader`` in its order; the model's train/eval mode is restored."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    probs, labels = [], []
    try:
        for x, y in loader:
            probs.append(torch.sigmoid(model(x.to(device))).float().cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy().astype(int)
