"""Training augmentation: a function of one cached uint8 grey image tensor (1 x S x S), on any device.

Two parts. :func:`train_augment`: geometry and brightness/contrast jitter (the original recipe).
:class:`SourceAugment`: what differs between the sources of COVID-CT (figure crops from many papers) and
a scanner's DICOM: windowing, gamma, blur or sharpening, noise, resolution and JPEG compression. Randomising
them in training takes them away as a cue for the class. Each step is switched off by a strength of 0 (or
null), and all randomness comes from torch's generator, so the data module's per-sample seeding makes an
epoch replay exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from covidnet.core.options import Rule, boolean, in_group, is_integer, is_number, number

# strength of each step; 0 / null switches a step off (conf/data/source_aug/default.yaml)
SOURCE_AUG_DEFAULTS = {
    "p": 0.5,  # probability of each switched-on step, independently
    "gamma": 0.4,  # gamma = exp(U(-g, g))
    "window": 0.15,  # new black / white points shifted by U(-w, w) of the range
    "blur_sigma": 1.2,  # Gaussian blur with sigma U(0.3, s) pixels
    "sharpen": 2.0,  # unsharp: sharpness factor U(1, 1 + s)
    "noise_std": 0.04,  # Gaussian noise, std U(0, n) of the range
    "downup_min": 0.35,  # shrink to a factor U(d, 1) of the side, then back up
    "jpeg_quality_min": 20,  # JPEG re-encoding with quality U(q, 95)
}

# conf/data keys of the augmentation (covidnet.core.options); SourceAugment checks p, downup_min and jpeg_quality_min with these
OPTIONS: dict[str, Rule] = {
    "data.augment": boolean(),
    "data.crop_scale_min": number(0, 1, lo_open=True).because("the smallest crop's share of the image area"),
    "data.hflip": boolean(),
    "data.rotate_degrees": number(0, 180),
    "data.jitter": number(0, 1),
    # data.source_aug is null unless data/source_aug=default switches it on
    **in_group("data.source_aug", {
        "data.source_aug.p": number(0, 1),
        "data.source_aug.gamma": number(0, 3),
        "data.source_aug.window": number(0, 0.45),
        "data.source_aug.blur_sigma": number(0, 10),
        "data.source_aug.sharpen": number(0, 10),
        "data.source_aug.noise_std": number(0, 1),
        "data.source_aug.downup_min": Rule("0 (off) or a number in (0, 1)", lambda v: is_number(v) and (v == 0 or 0 < v < 1)),
        "data.source_aug.jpeg_quality_min": Rule("0 (off) or an integer in [1, 95]", lambda v: is_integer(v) and (v == 0 or 1 <= v <= 95)),
    }),
}


def train_augment(image_size: int, crop_scale_min: float, hflip: bool, rotate_degrees: float, jitter: float) -> v2.Compose:
    """Random resized crop, optional flip, rotation and brightness/contrast jitter on a uint8 image."""
    steps = [v2.RandomResizedCrop(image_size, scale=(crop_scale_min, 1.0), ratio=(0.8, 1.25), antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if rotate_degrees:
        steps.append(v2.RandomRotation(rotate_degrees))
    if jitter:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter))
    return v2.Compose(steps)


# --- the same augmentation on a device, per sample in batches (data.device_augment) ----------------------
# train_augment's random draws, made in the same order from a generator seeded like the CPU path's
# (torch.manual_seed(sample seed)), so every sample gets the crop, flip, angle and jitter factors the CPU path
# would give it (tests/test_device_augment.py checks this against torchvision). The pixels are then computed
# for a whole batch on the device: crop + resize + flip + rotation as ONE bilinear warp (torchvision: an
# antialiased resize, then a nearest-neighbour rotation), the jitter as per-sample arithmetic. A step added to
# train_augment must be added to augment_params and augment_batch too (the test fails until it is).
# Parameter vector per sample: top, left, height, width, flip, angle (degrees), brightness, contrast, contrast first.
N_PARAMS = 9


def augment_params(seed: int, image_size: int, crop_scale_min: float, hflip: bool, rotate_degrees: float, jitter: float) -> torch.Tensor:
    """The random parameters train_augment draws for one sample seeded with ``seed``, as a float64 vector."""
    g = torch.Generator().manual_seed(int(seed))
    size = image_size  # the cache holds image_size x image_size images
    area, log_ratio = size * size, (math.log(0.8), math.log(1.25))
    for _ in range(10):  # v2.RandomResizedCrop.make_params
        target_area = area * torch.empty(1).uniform_(crop_scale_min, 1.0, generator=g).item()
        aspect = math.exp(torch.empty(1).uniform_(*log_ratio, generator=g).item())
        w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= size and 0 < h <= size:
            top = torch.randint(0, size - h + 1, size=(1,), generator=g).item()
            left = torch.randint(0, size - w + 1, size=(1,), generator=g).item()
            break
    else:  # square image, ratio range holds 1: the whole image
        top, left, h, w = 0, 0, size, size
    flip = bool(hflip) and torch.rand(1, generator=g).item() < 0.5  # v2.RandomHorizontalFlip(p=0.5)
    angle = torch.empty(1).uniform_(-rotate_degrees, rotate_degrees, generator=g).item() if rotate_degrees else 0.0
    brightness = contrast = 1.0
    contrast_first = False
    if jitter:  # v2.ColorJitter: the order of its four operations, then brightness and contrast factors
        order = torch.randperm(4, generator=g).tolist()
        brightness = torch.empty(1).uniform_(max(0.0, 1 - jitter), 1 + jitter, generator=g).item()
        contrast = torch.empty(1).uniform_(max(0.0, 1 - jitter), 1 + jitter, generator=g).item()
        contrast_first = order.index(1) < order.index(0)
    return torch.tensor([top, left, h, w, float(flip), angle, brightness, contrast, float(contrast_first)], dtype=torch.float64)


def augment_batch(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1, S, S) images and (N, N_PARAMS) parameters, both on one device -> augmented uint8 (N, 1, S, S)."""
    n, _, size, _ = images.shape
    p = params.to(images.device, torch.float32)
    top, left, h, w, flip, angle, brightness, contrast, contrast_first = p.unbind(1)
    # output pixel centres in normalised coordinates (align_corners=False), x right, y down
    lin = (torch.arange(size, device=images.device, dtype=torch.float32) * 2 + 1) / size - 1
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    gx, gy = gx.expand(n, size, size), gy.expand(n, size, size)
    # rotation about the centre, counter-clockwise for a positive angle (as torchvision): sample the inverse
    theta = torch.deg2rad(angle).view(n, 1, 1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    rx, ry = cos * gx - sin * gy, sin * gx + cos * gy
    rx = torch.where(flip.view(n, 1, 1) > 0, -rx, rx)
    inside = (rx.abs() <= 1) & (ry.abs() <= 1)  # torchvision fills what the rotation brings in from outside the crop with 0
    # the crop (rows top..top+h, columns left..left+w) resized to the whole image
    sx = rx * (w / size).view(n, 1, 1) + ((2 * left + w) / size - 1).view(n, 1, 1)
    sy = ry * (h / size).view(n, 1, 1) + ((2 * top + h) / size - 1).view(n, 1, 1)
    x = torch.nn.functional.grid_sample(images.float(), torch.stack([sx, sy], -1), mode="bilinear", padding_mode="border", align_corners=False)
    x = torch.where(inside.unsqueeze(1), x, torch.zeros((), device=x.device)).round()  # uint8 after the warp, as on the CPU

    def adjust_brightness(t):
        return (t * brightness.view(n, 1, 1, 1)).clamp(0, 255).floor()

    def adjust_contrast(t):
        mean = t.mean(dim=(1, 2, 3), keepdim=True)
        c = contrast.view(n, 1, 1, 1)
        return (c * t + (1 - c) * mean).clamp(0, 255).floor()

    first = contrast_first.view(n, 1, 1, 1) > 0
    x = torch.where(first, adjust_brightness(adjust_contrast(x)), adjust_contrast(adjust_brightness(x)))
    return x.to(torch.uint8)
def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


class SourceAugment:
    """uint8 (1 or C) x H x W -> uint8, same shape: source-invariance steps, each with probability ``p``."""

    STEPS = ("window", "gamma", "blur_sigma", "sharpen", "downup_min", "noise_std", "jpeg_quality_min")

    def __init__(self, **strengths):
        unknown = set(strengths) - set(SOURCE_AUG_DEFAULTS)
        if unknown:
            raise ValueError(f"Unknown data.source_aug keys {sorted(unknown)}; known: {', '.join(SOURCE_AUG_DEFAULTS)}.")
        s = {k: strengths.get(k, 0) or 0 for k in SOURCE_AUG_DEFAULTS}
        s["p"] = strengths.get("p", SOURCE_AUG_DEFAULTS["p"])
        for name in ("p", "downup_min", "jpeg_quality_min"):  # the others are the config check's alone
            OPTIONS[f"data.source_aug.{name}"].check(f"data.source_aug.{name}", s[name])
        self.s = s

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> SourceAugment | None:
        """None (or p = 0, or every strength 0) -> no source augmentation at all."""
        if not cfg:
            return None
        aug = cls(**dict(cfg))
        return aug if aug.s["p"] > 0 and any(aug.s[k] for k in cls.STEPS) else None

    def active(self) -> list[str]:
        return [k for k in self.STEPS if self.s[k]]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        s, p = self.s, self.s["p"]
        # draw every coin in a fixed order, whether or not its step is on: the same seed, the same choices
        coins = torch.rand(len(self.STEPS)) < p
        on = {k: bool(c) and bool(s[k]) for k, c in zip(self.STEPS, coins)}
        if not any(on.values()):
            return img
        x = img.float().div(255)
        if on["window"]:
            lo, hi = _uniform(-s["window"], s["window"]), 1 + _uniform(-s["window"], s["window"])
            x = ((x - lo) / max(hi - lo, 1e-3)).clamp(0, 1)
        if on["gamma"]:
            x = x.clamp_min(0).pow(math.exp(_uniform(-s["gamma"], s["gamma"])))
        if on["blur_sigma"]:
            sigma = _uniform(0.3, max(0.3, s["blur_sigma"]))
            k = 2 * math.ceil(2.5 * sigma) + 1
            x = TF.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])
        if on["sharpen"]:
            x = TF.adjust_sharpness(x, 1 + _uniform(0, s["sharpen"]))
        if on["downup_min"]:
            h, w = x.shape[-2:]
            f = _uniform(s["downup_min"], 1.0)
            small = F.interpolate(x[None], size=(max(4, round(h * f)), max(4, round(w * f))), mode="bilinear", antialias=True, align_corners=False)
            x = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]
        if on["noise_std"]:
            x = x + torch.randn(x.shape, device=x.device) * _uniform(0, s["noise_std"])
        out = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        if on["jpeg_quality_min"]:
            quality = int(round(_uniform(s["jpeg_quality_min"], 95)))
            out = TF.jpeg(out.cpu(), quality).to(img.device) if out.is_cuda else TF.jpeg(out, quality)
        return out
