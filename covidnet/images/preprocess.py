"""The one preprocessing path from a float grey image to the network's input (training, evaluation, CAMs).

Every reader gives a float grey HxW image in [0, 1]; :func:`prepare` turns it into the uint8 1 x S x S tensor
the data module caches (field of view, intensity, resize), and :class:`Preprocess` into the normalised
3 x S x S network input. :class:`InputSpec` names every choice, and is stored with each checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from covidnet.core.options import Rule, integer, number, one_of
from covidnet.images.lungs import bounding_box, segment_lungs

# Mean/std of the ImageNet training set, the statistics torchvision's pretrained ResNets expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# normalization name -> (mean, std) applied to the grey image repeated to three channels
NORMALIZATIONS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # intensities in [0, 1], as CT foundation models expect
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # [-1, 1], as TensorFlow's EfficientNet-Lite weights expect
}


def resize_grey(grey: np.ndarray, size: int) -> torch.Tensor:
    """Float grey HxW in [0, 1] -> uint8 tensor 1 x size x size (antialiased, aspect not kept)."""
    x = torch.from_numpy(np.ascontiguousarray(grey))[None, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x[0].clamp(0, 1) * 255).round().to(torch.uint8)


class Preprocess:
    """uint8 grey 1xSxS -> float 3xSxS as the network expects; its inverse recovers the grey image."""

    def __init__(self, normalization: str):
        OPTIONS["data.normalization"].check("data.normalization", normalization)
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


# --- the field of view and intensity: what part of the slice the network sees, and how bright -----------
# full: the whole image; lung_crop: the lungs' bounding box with a margin; lung_only: that box, with what lies
# outside the lung field set to 0 (frames, text, arrows, the table and the body wall are gone).
FIELDS = ("full", "lung_crop", "lung_only")
# none: as decoded; lung_percentile: the 1st..99th percentile of the lung field mapped to [0, 1] (sources
# windowed differently look alike); image_percentile: the same over the whole (cropped) image
INTENSITIES = ("none", "lung_percentile", "image_percentile")
PERCENTILES = (1.0, 99.0)

# the keys of conf/data that decide the input (covidnet.core.options); InputSpec and Preprocess check with these rules
OPTIONS: dict[str, Rule] = {
    "data.image_size": integer(32, 2048).because("the side in pixels; ResNet downsamples by 32"),
    "data.normalization": one_of(sorted(NORMALIZATIONS)),
    "data.field": one_of(FIELDS),
    "data.intensity": one_of(INTENSITIES),
    "data.crop_margin": number(0, 1).because("the share of the lung box's size added on each side"),
}


@dataclass(frozen=True)
class InputSpec:
    """Everything that decides the network's input for a given file: stored, as plain values, in every
    checkpoint (model hparams ``input_spec``), so a checkpoint describes its own input."""

    image_size: int = 224
    normalization: str = "imagenet"
    field: str = "full"
    intensity: str = "none"
    crop_margin: float = 0.05

    def __post_init__(self):
        for name in ("normalization", "field", "intensity", "crop_margin"):  # image_size: the config check's alone
            OPTIONS[f"data.{name}"].check(f"data.{name}", getattr(self, name))

    @classmethod
    def from_dict(cls, d: dict | None) -> InputSpec:
        """From a checkpoint's ``input_spec`` or a data module's hparams; missing keys (old checkpoints) take the
        defaults, so a checkpoint from before lung fields loads as ``field=full, intensity=none``."""
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names and v is not None})

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def needs_lungs(self) -> bool:
        return self.field != "full" or self.intensity == "lung_percentile"


@dataclass
class Prepared:
    """One slice as the cache holds it: uint8 1 x S x S, and whether the lung field was found (``None`` when
    the spec needs no segmentation). A slice without lungs falls back to the full image, and is counted."""

    image: torch.Tensor
    lungs_found: bool | None
    lung_mask: torch.Tensor | None = None  # bool S x S: the lung field in the prepared image (None if not found)
    box: tuple[int, int, int, int] | None = None  # (top, bottom, left, right) of the crop in the file's pixels

    def carry(self, other: np.ndarray, size: int) -> torch.Tensor:
        """Another HxW array of the same file (e.g. a lesion mask, float in [0, 1]) in this image's frame:
        the same crop and resize, no intensity change, uint8 1 x S x S."""
        other = np.asarray(other, dtype=np.float32)
        if self.box is not None:
            top, bottom, left, right = self.box
            other = other[top:bottom, left:right]
        return resize_grey(other, size)


def _segment(grey: np.ndarray) -> np.ndarray | None:
    return segment_lungs(np.asarray(grey, dtype=np.float32))


def _stretch(grey: np.ndarray, values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, PERCENTILES) if values.size else (0.0, 1.0)
    if hi - lo < 1e-6:
        return grey
    return np.clip((grey - lo) / (hi - lo), 0, 1).astype(np.float32)


def prepare_grey(grey: np.ndarray, spec: InputSpec, lungs: np.ndarray | None | str = "segment") -> tuple[np.ndarray, np.ndarray | None, bool | None, tuple | None]:
    """Float grey HxW in [0, 1] -> (grey after field and intensity, lung mask on it or None, lungs found, crop box).

    ``lungs``: a precomputed mask (or None for "none found"); by default the slice is segmented here when
    the spec needs it (covidnet/images/lungs.py).
    """
    grey = np.asarray(grey, dtype=np.float32)
    if not spec.needs_lungs and isinstance(lungs, str):
        mask, found = None, None
    else:
        if isinstance(lungs, str):
            lungs = _segment(grey)
        mask, found = lungs, lungs is not None
    box = None
    if mask is not None and spec.field != "full":
        box = top, bottom, left, right = bounding_box(mask, spec.crop_margin)
        grey, mask = grey[top:bottom, left:right], mask[top:bottom, left:right]
        if spec.field == "lung_only":
            grey = np.where(mask, grey, 0.0).astype(np.float32)
    if spec.intensity == "lung_percentile":
        grey = _stretch(grey, grey[mask] if mask is not None else grey.reshape(-1))
        if spec.field == "lung_only" and mask is not None:
            grey = np.where(mask, grey, 0.0).astype(np.float32)
    elif spec.intensity == "image_percentile":
        grey = _stretch(grey, grey.reshape(-1))
    return grey, mask, found, box


def prepare(grey: np.ndarray, spec: InputSpec, lung_mask: bool = False) -> Prepared:
    """Float grey HxW in [0, 1] (any reader's output) -> what the cache holds, at ``spec.image_size``.

    ``lung_mask=True`` also segments a ``field=full`` slice, for scoring maps against its lung field (the
    input tensor is the same either way)."""
    g, mask, found, box = prepare_grey(grey, spec, "segment" if (spec.needs_lungs or not lung_mask) else _segment(grey))
    lung = None
    if mask is not None:
        lung = resize_grey(mask.astype(np.float32), spec.image_size)[0] >= 128
    return Prepared(resize_grey(g, spec.image_size), found, lung, box)


def model_input(grey: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """Float grey HxW in [0, 1] -> the normalised 3 x S x S tensor the network sees at evaluation."""
    return Preprocess(spec.normalization)(prepare(grey, spec).image)
