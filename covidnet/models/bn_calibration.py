"""BatchNorm running statistics estimated on data, for frozen layers whose statistics were never estimated.

A randomly initialised BatchNorm layer holds running mean 0 and variance 1. In training mode that does not
matter (each batch is normalised by its own statistics), but a *frozen* random network runs in eval mode, so
those placeholder statistics are used as they are: activations are then not normalised at all and grow
through every residual block (ResNet-152's pooled features reach ~1e4; a linear head on them saturates and
its outputs are nearly constant). A fair random-features baseline estimates the statistics first, as a
pretrained network's were: forward passes in training mode, without gradients, over the training images.

The statistics written are the exact mean and (unbiased) variance of each BatchNorm layer's input over all
pixels of all images passed (accumulated in float64), with the layers in training mode during the pass, as
``torch.optim.swa_utils.update_bn`` does, but exact also when batches differ in size. Running it again
overwrites, it never accumulates: the same images give the same statistics. ``CovidClassifier.ensure_bn_calibrated``
does it when fitting starts, on the training split only (``training_batches``: the data module's deterministic
preprocessing, no augmentation, fixed order, batches of ``BATCH_SIZE``; the batch size matters for deeper layers,
whose inputs are batch-normalised during the pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BATCH_SIZE = 32  # the training batch size of conf/data: layers see batches like those they would be trained on


def training_batches(datamodule, device: torch.device | str = "cpu", batch_size: int = BATCH_SIZE) -> Iterator[torch.Tensor]:
    """The training split's images, preprocessed without augmentation, in order: what calibration may see."""
    datasets = getattr(datamodule, "datasets", None) or {}
    dataset = datasets.get("train")
    dataset = getattr(dataset, "source", dataset)  # a FeatureDataset (callbacks/frozen_features.py) keeps its images
    if dataset is None or not hasattr(dataset, "images") or not hasattr(dataset, "preprocess"):
        raise ValueError(
            "model.calibrate_bn=true estimates BatchNorm statistics on the training images and needs covidnet's data module "
            "(datamodule.datasets['train'] with cached images); set model.calibrate_bn=false to keep the initial statistics."
        )
    for i in range(0, len(dataset.images), batch_size):
        yield torch.stack([dataset.preprocess(img) for img in dataset.images[i : i + batch_size]]).to(device)


def batchnorm_layers(modules: Iterable[nn.Module]) -> list[_BatchNorm]:
    """Every BatchNorm layer inside ``modules``, once each, in module order."""
    seen, found = set(), []
    for module in modules:
        for m in module.modules():
            if isinstance(m, _BatchNorm) and id(m) not in seen:
                seen.add(id(m))
                found.append(m)
    return found


@torch.no_grad()
def estimate_batchnorm_statistics(forward: Callable[[torch.Tensor], object], batches: Iterable[torch.Tensor], layers: list[_BatchNorm]) -> int:
    """Run ``forward`` on every batch with ``layers`` in training mode; set their running mean and variance
    to those of their inputs over all batches. Returns the number of images seen (0 changes nothing)."""
    layers = [m for m in layers if m.running_mean is not None]  # track_running_stats=False: nothing to set
    if not layers:
        return 0
    sums: dict[int, list] = {id(m): [0.0, 0.0, 0] for m in layers}

    def record(module: _BatchNorm, args) -> None:
        x = args[0].detach().to(torch.float64)
        dims = [0, *range(2, x.dim())]  # all but the channel axis
        acc = sums[id(module)]
        acc[0] = acc[0] + x.sum(dims)
        acc[1] = acc[1] + (x * x).sum(dims)
        acc[2] += x.numel() // x.shape[1]

    modes = [m.training for m in layers]
    hooks = [m.register_forward_pre_hook(record) for m in layers]
    images = batches_seen = 0
    try:
        for m in layers:
            m.train()
        for x in batches:
            forward(x)
            images += len(x)
            batches_seen += 1
    finally:
        for h in hooks:
            h.remove()
        for m, mode in zip(layers, modes):
            m.train(mode)
    if images == 0:
        return 0
    for m in layers:
        s, ss, n = sums[id(m)]
        mean = s / n
        var = (ss - n * mean * mean).clamp_min(0) / max(n - 1, 1)  # unbiased, as BatchNorm stores it
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
        if m.num_batches_tracked is not None:
            m.num_batches_tracked.fill_(batches_seen)
    return images
