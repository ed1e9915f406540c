"""Train a partly frozen model on its frozen part's output, computed once per image instead of every epoch.

With ``model.freeze=backbone`` (or ``up_to_layer4``) and no training augmentation, the frozen layers see the
same images in the same (eval) mode every epoch, so their output never changes. This callback computes it
once per split (``CovidClassifier.features``), has the data module serve it instead of the images
(``datamodule.wrap_datasets``) and sets the model to take it (``CovidClassifier.take_features``: its steps
then run ``head`` only). The model and its checkpoints are unchanged: whole-network state_dicts that take
images, as usual.

The stem..layer3 output (frozen in both modes) can also be kept in ``cache_dir``, keyed by a hash of those
layers' weights and the split's network inputs: the same weights (``init=ct``, or a scratch model of the same
seed) then skip the costly part in later runs. ``backbone`` mode adds layer4 + pooling to it. This callback
owns that slicing of the frozen part (stem..layer3, then the rest).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import Dataset

from covidnet.callbacks.cam_logger import CamLogger
from covidnet.core.atomic import atomic_path
from covidnet.models.predict import eval_mode
from covidnet.models.weights_io import tensors_sha256

SHARED_PREFIX_END = "layer3"  # last stage frozen in every freeze mode: what cache_dir holds


class FeatureDataset(Dataset):
    """A split's frozen features and labels; ``source`` is the image dataset they are computed from."""

    def __init__(self, source: Dataset):
        self.source = source
        self.features: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.key: str | None = None  # hash of the frozen weights + inputs the features came from

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: int | tuple[int, int]):
        i = item[0] if isinstance(item, tuple) else item  # EpochSampler's (index, seed): no augmentation to seed
        if self.features is None:
            raise RuntimeError("Frozen features were read before FrozenFeatureCache computed them.")
        return self.features[i], self.labels[i]


def split_frozen_stages(model) -> tuple[list, list]:
    """The frozen steps as (stem..layer3, the rest): the first part is the same in every freeze mode."""
    frozen = model.frozen_stages()
    names = [name for name, _ in frozen]
    if SHARED_PREFIX_END not in names:  # an architecture with one freeze mode (EfficientNet-Lite0: backbone)
        return frozen, []
    end = names.index(SHARED_PREFIX_END) + 1
    return frozen[:end], frozen[end:]


def stage_state(stages) -> list[torch.Tensor]:
    """Parameters and buffers of ``stages``: what their output depends on."""
    return [t for _, module in stages for t in module.state_dict().values()]


def run(stages, x: torch.Tensor) -> torch.Tensor:
    for _, module in stages:
        x = module(x)
    return x


class FrozenFeatureCache(L.Callback):
    """``callbacks.frozen_features.enabled=true`` (needs ``model.freeze`` backbone|up_to_layer4 and
    ``data.augment=false``); ``cache_dir`` keeps the stem..layer3 output on disk for later runs (null: memory)."""

    def __init__(self, enabled: bool = False, cache_dir: str | None = None, batch_size: int = 32):
        self.enabled, self.batch_size = enabled, batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.feature_sets: dict[str, FeatureDataset] = {}

    # --- checks, and having the loaders serve features ------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.enabled:
            return
        freeze = pl_module.hparams.get("freeze", "none")
        if getattr(pl_module, "trained_modules", None) is None:
            raise ValueError(f"callbacks.frozen_features.enabled=true needs model.freeze=backbone or up_to_layer4, not {freeze!r}.")
        dm = trainer.datamodule
        if not hasattr(dm, "wrap_datasets"):
            raise ValueError("callbacks.frozen_features needs covidnet's data module (CovidCTDataModule.wrap_datasets).")
        if getattr(dm.datasets.get("train"), "augment", None) is not None:
            raise ValueError(
                "callbacks.frozen_features.enabled=true computes each frozen feature once, which training augmentation "
                "would make wrong: set data.augment=false (it switches off data.crop_scale_min, data.hflip, "
                "data.rotate_degrees and data.jitter), or switch the cache off."
            )
        if any(isinstance(cb, CamLogger) for cb in trainer.callbacks):
            raise ValueError(
                "callbacks.frozen_features feeds the model cached features, not images, so CAMs cannot be drawn during "
                "training: add callbacks.cam=null (draw CAMs of the checkpoint afterwards with visualize.py)."
            )
        if pl_module.hparams.get("tta_flip"):
            raise ValueError(
                "callbacks.frozen_features caches the features of each image as it is, so model.tta_flip=true could not "
                "average it with its mirror in validation and test, while evaluate.py (which reads images) would: set "
                "model.tta_flip=false, or switch the cache off."
            )
        dm.wrap_datasets(self.wrap)
        pl_module.take_features(True)

    def wrap(self, split: str, dataset: Dataset) -> FeatureDataset:
        """The data module's hook: what its loaders read for ``split`` (filled before any loader is read)."""
        if split not in self.feature_sets or self.feature_sets[split].source is not dataset:
            self.feature_sets[split] = FeatureDataset(dataset)
        return self.feature_sets[split]

    # --- computing them after any checkpoint is restored, before a loader is read ----------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        # Anything that changes the frozen layers (e.g. estimating BatchNorm statistics of frozen random layers)
        # must have run by now: the features computed here stand for the whole fit.
        self.fill(trainer, pl_module, ("train", "val"))

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # while fitting, on_fit_start did it and frozen weights stay
            self.fill(trainer, pl_module, ("val",))

    def on_test_start(self, trainer, pl_module) -> None:
        self.fill(trainer, pl_module, ("test",))

    def fill(self, trainer, pl_module, splits) -> None:
        if not self.enabled:
            return
        # frozen random layers' BatchNorm statistics (model.calibrate_bn) before their output is computed: the model
        # would do it in its own on_fit_start, which Lightning calls after the callbacks'
        if trainer.state.fn == TrainerFn.FITTING and hasattr(pl_module, "ensure_bn_calibrated"):
            pl_module.ensure_bn_calibrated()
        elif getattr(pl_module, "needs_bn_calibration", lambda: False)():
            raise ValueError("model.calibrate_bn=true but this model's BatchNorm statistics were never estimated: fit it first.")
        prefix, rest = split_frozen_stages(pl_module)
        weights_key = tensors_sha256(stage_state(prefix + rest))
        for split in splits:
            ds = trainer.datamodule.loader_dataset(split)
            key = tensors_sha256(self.inputs(ds.source), weights_key)
            if ds.key != key:  # new weights (e.g. another checkpoint) or first use
                ds.features, ds.labels = self.compute(pl_module, ds.source)
                ds.key = key

    def inputs(self, source: Dataset):
        """The network inputs of ``source`` in batches (its deterministic preprocessing; no augmentation)."""
        for start in range(0, len(source), self.batch_size):
            yield torch.stack([source[i][0] for i in range(start, min(len(source), start + self.batch_size))])

    @torch.inference_mode()
    def compute(self, model, source: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """(frozen output, labels) for every item of ``source``, in eval mode (the frozen parts always are)."""
        labels = torch.stack([torch.as_tensor(source[i][1]) for i in range(len(source))])
        prefix, rest = split_frozen_stages(model)
        with eval_mode(model):
            shared = self.shared_prefix(model, source, prefix)
            if not rest:
                return shared, labels
            device = next(model.parameters()).device
            out = [run(rest, shared[i : i + self.batch_size].to(device)).cpu() for i in range(0, len(shared), self.batch_size)]
            return torch.cat(out), labels

    def shared_prefix(self, model, source: Dataset, prefix) -> torch.Tensor:
        """stem..layer3 output of every item, from ``cache_dir`` when these weights and inputs were seen before."""
        path = None
        if self.cache_dir is not None:
            key = tensors_sha256(self.inputs(source), tensors_sha256(stage_state(prefix)))
            path = self.cache_dir / f"{model.hparams.arch}-{SHARED_PREFIX_END}-{key[:32]}.pt"
            if path.exists():
                return torch.load(path, weights_only=True)
        device = next(model.parameters()).device
        features = torch.cat([run(prefix, x.to(device)).cpu() for x in self.inputs(source)])
        if path is not None:
            with atomic_path(path) as tmp:  # readers never see half a file
                torch.save(features, tmp)
        return features
