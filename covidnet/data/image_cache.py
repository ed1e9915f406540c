"""The data module's in-memory image cache: decoded, resized uint8 images, served with the training
augmentation or, on the device path, as indices and augmentation parameters (covidnet/data/datamodule.py).

Apart from covidnet/data/datamodule.py so that the data module stays short; it imports neither Lightning nor the data module.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.data import Dataset

from covidnet.images.preprocess import Preprocess


class CachedImages(Dataset):
    """Decoded, resized images held in memory as uint8, so no epoch re-reads a file."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, preprocess: Preprocess, augment=None, device_params=None):
        self.images, self.labels, self.preprocess, self.augment = images, labels, preprocess, augment
        # data.device_augment: items are {index, augment_params, label}; the data module's
        # on_after_batch_transfer makes the images on the device from its copy of the cache
        self.device_params = device_params

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int | tuple[int, int]):
        with one_thread():
            return self._item(item)

    def _item(self, item: int | tuple[int, int]):
        # EpochSampler passes (index, seed): the augmentation then depends on that seed only (exact resume)
        i, seed = item if isinstance(item, tuple) else (item, None)
        if self.device_params is not None:
            seed = torch.randint(0, 2**62, (1,)).item() if seed is None else seed
            return {"index": i, "augment_params": self.device_params(seed), "label": self.labels[i]}
        img = self.images[i]
        if self.augment is not None:
            if seed is None:
                img = self.augment(img)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    img = self.augment(img)
        return self.preprocess(img), self.labels[i]


@contextlib.contextmanager
def one_thread():
    """One intra-op thread for per-image work, as in DataLoader workers. With num_workers=0 the training
    process's threads would otherwise split each small op and wait on each other: ~15x the CPU time per
    image on 2 cores (docs/performance.md)."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
