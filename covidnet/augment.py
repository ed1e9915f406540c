"""Training augmentation: a function of one cached uint8 grey image tensor (1 x S x S)."""

from __future__ import annotations

import math

import torch
from torchvision.transforms import v2


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
