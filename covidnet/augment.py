"""Training augmentation: a function of one cached uint8 grey image tensor (1 x S x S)."""

from __future__ import annotations

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
