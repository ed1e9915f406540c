"""The one preprocessing path from a float grey image to the network's input (training, evaluation, CAMs)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Mean/std of the ImageNet training set, the statistics torchvision's pretrained ResNets expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# normalization name -> (mean, std) applied to the grey image repeated to three channels
NORMALIZATIONS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # intensities in [0, 1], as CT foundation models expect
}


def resize_grey(grey: np.ndarray, size: int) -> torch.Tensor:
    """Float grey HxW in [0, 1] -> uint8 tensor 1 x size x size (antialiased, aspect not kept)."""
    x = torch.from_numpy(np.ascontiguousarray(grey))[None, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x[0].clamp(0, 1) * 255).round().to(torch.uint8)


class Preprocess:
    """uint8 grey 1xSxS -> float 3xSxS as the network expects; its inverse recovers the grey image."""

    def __init__(self, normalization: str):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"Unknown data.normalization={normalization!r}; choose one of {sorted(NORMALIZATIONS)}.")
        mean, std = NORMALIZATIONS[normalization]
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, grey_u8: torch.Tensor) -> torch.Tensor:
        x = grey_u8.float().div_(255).expand(3, *grey_u8.shape[-2:])
        return (x - self.mean) / self.std

    def to_grey(self, x: torch.Tensor) -> torch.Tensor:
        """Network input (..., 3, H, W) -> grey (..., H, W) in [0, 1], for drawing overlays."""
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return (x * std + mean)[..., 0, :, :].clamp(0, 1)
