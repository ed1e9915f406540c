"""Seeded choices of images: a training order that a resumed run can replay exactly, and draws per class.

Lightning 2.6 restores weights, optimizer, scheduler and loop counters from a checkpoint, but not random
number generators, and after a mid-epoch checkpoint it restarts the data loader at the beginning of the
epoch while counting batches on from where it stopped. ``EpochSampler`` makes the shuffled order and every
augmentation draw a function of ``(seed, epoch, position)`` only, and starts a resumed epoch at the first
batch the checkpoint had not trained on, so an interrupted-and-resumed run sees the same batches, augmented
the same way, as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


class EpochSampler(Sampler):
    """Yields ``(index, augmentation seed)`` pairs: a seeded permutation per epoch.

    ``position()`` returns ``(epoch, samples already trained on in this epoch)``; it is read when an epoch's
    iteration starts, so it needs no ``set_epoch`` call and survives a restart.
    """

    def __init__(self, n: int, seed: int, position: Callable[[], tuple[int, int]] = lambda: (0, 0), weights=None):
        self.n, self.seed, self.position = n, seed, position
        # optional per-index sampling weights (balanced sources and classes): n draws with replacement per epoch
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def __len__(self) -> int:
        # a resumed epoch yields fewer items, but Lightning counts the epoch's batches on from the checkpoint
        return self.n

    def order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = epoch_generator(self.seed, epoch)
        if self.weights is None:
            perm = torch.randperm(self.n, generator=g)
        else:
            perm = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        seeds = torch.randint(0, 2**62, (self.n,), generator=g)
        return perm, seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.position()
        perm, seeds = self.order(epoch)
        for j in range(skip, self.n):
            yield int(perm[j]), int(seeds[j])


def draw_per_class(labels: Sequence[int], n: int | Callable[[int], int], seed: int, classes: Sequence[int]) -> dict[int, list[int]]:
    """Seeded draw without replacement of ``n`` indices per class (``n(class size)`` if callable; at most the
    class size), class by class in the order of ``classes`` from one generator; sorted within each class.

    The one way covidnet picks images per class: the training fraction (``data.fraction``), the CAM callback's
    fixed images and visualize's figure rows. The same seed and labels give the same images.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    drawn = {}
    for c in classes:
        pool = np.flatnonzero(labels == c)
        k = min(n(len(pool)) if callable(n) else n, len(pool))
        drawn[c] = sorted(rng.choice(pool, k, replace=False).tolist())
    return drawn
