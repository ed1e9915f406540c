"""Train a partly frozen model on its frozen part's output, computed once per image instead of every epoch.

With ``model.freeze=backbone`` (or ``up_to_layer4``) and no training augmentation, the frozen layers see the
same images in the same (eval) mode every epoch, so their output never changes. This callback computes it
once per split and swaps each split's dataset for the cached outputs; the model's forward then runs only the
trained part on them (``CovidClassifier.forward`` tells images, N x 3 x H x W, from features). The model and
its checkpoints are unchanged: whole-network state_dicts that take images, as usual.

The stem..layer3 output (frozen in both modes) can also be kept in ``cache_dir``, keyed by a hash of those
layers' weights, the split's cached images and the normalisation: the same weights (``init=ct``, or a scratch
model of the same seed) then skip the costly part in later runs. ``backbone`` mode adds layer4 + pooling to it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import Dataset

from covidnet.model import FREEZE_MODES

SHARED_PREFIX_END = "layer3"  # last stage frozen in every freeze mode: what cache_dir holds


class FeatureDataset(Dataset):
    """A split's frozen features and labels; ``source`` is the image dataset they were computed from."""

    def __init__(self, source: Dataset):
        self.source, self.labels = source, source.labels
        self.features: torch.Tensor | None = None
        self.key: str | None = None  # hash of the frozen weights + images the features came from

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int | tuple[int, int]):
        i = item[0] if isinstance(item, tuple) else item  # EpochSampler's (index, seed): no augmentation to seed
        if self.features is None:
            raise RuntimeError("Frozen features were read before FrozenFeatureCache computed them.")
        return self.features[i], self.labels[i]


def tensors_hash(tensors, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def stage_state(model, last: str) -> list[torch.Tensor]:
    """Parameters and buffers of the stages up to ``last``: what their output depends on."""
    tensors = []
    for name, module in model.stages():
        tensors += list(module.state_dict().values())
        if name == last:
            return tensors
    raise ValueError(f"No stage {last!r}")


class FrozenFeatureCache(L.Callback):
    """``callbacks.frozen_features.enabled=true`` (needs ``model.freeze`` backbone|up_to_layer4 and
    ``data.augment=false``); ``cache_dir`` keeps the stem..layer3 output on disk for later runs (null: memory)."""

    def __init__(self, enabled: bool = False, cache_dir: str | None = None, batch_size: int = 32):
        self.enabled, self.batch_size = enabled, batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else None

    # --- checks and swapping the datasets ------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.enabled:
            return
        freeze = pl_module.hparams.get("freeze", "none")
        if FREEZE_MODES.get(freeze) is None:
            raise ValueError(f"callbacks.frozen_features.enabled=true needs model.freeze=backbone or up_to_layer4, not {freeze!r}.")
        dm = trainer.datamodule
        datasets = getattr(dm, "datasets", None)
        if not datasets:
            raise ValueError("callbacks.frozen_features needs covidnet's data module (datamodule.datasets per split).")
        if getattr(datasets.get("train"), "augment", None) is not None:
            raise ValueError(
                "callbacks.frozen_features.enabled=true computes each frozen feature once, which training augmentation "
                "would make wrong: set data.augment=false (it switches off data.crop_scale_min, data.hflip, "
                "data.rotate_degrees and data.jitter), or switch the cache off."
            )
        for cb in trainer.callbacks:
            if type(cb).__name__ == "CamLogger":
                raise ValueError(
                    "callbacks.frozen_features feeds the model cached features, not images, so CAMs cannot be drawn during "
                    "training: add callbacks.cam=null (draw CAMs of the checkpoint afterwards with visualize.py)."
                )
        for split, dataset in datasets.items():
            if not isinstance(dataset, FeatureDataset):
                datasets[split] = FeatureDataset(dataset)

    # --- computing them after any checkpoint is restored, before a loader is read ----------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        self.fill(trainer, pl_module, ("train", "val"))

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # while fitting, on_fit_start did it and frozen weights stay
            self.fill(trainer, pl_module, ("val",))

    def on_test_start(self, trainer, pl_module) -> None:
        self.fill(trainer, pl_module, ("test",))

    def fill(self, trainer, pl_module, splits) -> None:
        if not self.enabled:
            return
        datasets = trainer.datamodule.datasets
        frozen_last = pl_module.frozen_features_last()
        weights_key = tensors_hash(stage_state(pl_module, frozen_last))
        for split in splits:
            ds = datasets[split]
            key = tensors_hash([ds.source.images], f"{weights_key}/{ds.source.preprocess.mean}/{ds.source.preprocess.std}")
            if ds.key != key:  # new weights (e.g. another checkpoint) or first use
                ds.features, ds.key = self.compute(pl_module, ds.source, frozen_last), key

    @torch.inference_mode()
    def compute(self, model, source: Dataset, frozen_last: str) -> torch.Tensor:
        """Frozen output for every image of ``source``, in eval mode (the frozen parts always are)."""
        was_training = model.training
        model.eval()
        try:
            shared = self.shared_prefix(model, source)
            if frozen_last == SHARED_PREFIX_END:
                return shared
            device = next(model.parameters()).device
            names = [name for name, _ in model.stages()]
            first = names[names.index(SHARED_PREFIX_END) + 1]
            out = [model.run_stages(shared[i : i + self.batch_size].to(device), first, frozen_last).cpu() for i in range(0, len(shared), self.batch_size)]
            return torch.cat(out)
        finally:
            model.train(was_training)

    def shared_prefix(self, model, source: Dataset) -> torch.Tensor:
        """stem..layer3 output of every image, from ``cache_dir`` when these weights and images were seen before."""
        path = None
        if self.cache_dir is not None:
            prep = source.preprocess
            key = tensors_hash([*stage_state(model, SHARED_PREFIX_END), source.images], f"{prep.mean}/{prep.std}")
            path = self.cache_dir / f"{model.hparams.arch}-{SHARED_PREFIX_END}-{key[:32]}.pt"
            if path.exists():
                return torch.load(path, weights_only=True)
        device = next(model.parameters()).device
        out = []
        for i in range(0, len(source), self.batch_size):
            x = torch.stack([source.preprocess(img) for img in source.images[i : i + self.batch_size]])
            out.append(model.frozen_features(x.to(device), last=SHARED_PREFIX_END).cpu())
        features = torch.cat(out)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save(features, tmp)
            os.replace(tmp, path)  # readers never see half a file
        return features
