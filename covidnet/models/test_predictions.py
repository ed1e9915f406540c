"""The test loop's own P(COVID) per test image, kept for predictions_test.csv: the test split is predicted once.

``trainer.test`` computes metrics.json's test numbers from one forward pass per image (``CovidClassifier.test_step``
returns its probabilities); this callback keeps them, in the split's order, so the predictions file holds the very
numbers the test metrics were computed from, under the run's precision, rather than those of a second pass.
Under DDP each rank tests a share of the images (Lightning's distributed sampler, padded to equal shares): the
shares and the indices each rank was given are gathered, and every image's probability is put back in its place.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.distributed


class TestPredictions(L.Callback):
    """After ``trainer.test``: ``probs`` (float32) and ``labels`` (int) of every test image, in the test loader's
    dataset order (None before a test)."""

    def __init__(self):
        self.probs: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self._batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.probs = self.labels = None
        self._batches = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # .float(): as covidnet.models.predict gives probabilities (bf16 logits' sigmoid, widened)
        self._batches.append((outputs.detach().reshape(-1).float(), batch[1].detach().reshape(-1).long()))

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        batches, self._batches = self._batches, []
        probs = torch.cat([p for p, _ in batches]) if batches else torch.zeros(0)
        labels = torch.cat([y for _, y in batches]) if batches else torch.zeros(0, dtype=torch.long)
        if trainer.world_size > 1:
            probs, labels = in_dataset_order(trainer, pl_module, probs, labels)
        self.probs, self.labels = probs.cpu().numpy(), labels.cpu().numpy().astype(int)


def in_dataset_order(trainer, pl_module, probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's share gathered and put in dataset order by the indices its sampler gave it (padding repeats an
    image: it is written twice with the same value). Gathered as Python objects: the shares need not be equally long
    (an unpadded sampler), and a few hundred numbers cost nothing to send."""
    loader = trainer.test_dataloaders
    loader = loader[0] if isinstance(loader, (list, tuple)) else loader
    index = list(loader.sampler)[: len(probs)]
    shares: list = [None] * trainer.world_size
    torch.distributed.all_gather_object(shares, (index, probs.cpu().tolist(), labels.cpu().tolist()))
    n = len(loader.dataset)
    ordered_probs = torch.full((n,), float("nan"), dtype=probs.dtype)
    ordered_labels = torch.full((n,), -1, dtype=labels.dtype)
    for share_index, share_probs, share_labels in shares:
        ordered_probs[share_index] = torch.tensor(share_probs, dtype=probs.dtype)
        ordered_labels[share_index] = torch.tensor(share_labels, dtype=labels.dtype)
    missing = torch.nonzero(ordered_labels < 0).reshape(-1).tolist()
    if missing:
        raise RuntimeError(f"test predictions: the ranks' shares left out test images {missing[:10]} (a sampler that drops images)")
    return ordered_probs, ordered_labels
