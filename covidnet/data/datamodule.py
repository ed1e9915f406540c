"""Lightning data module for COVID-CT; preprocessing lives in covidnet/images/preprocess.py, augmentation in covidnet/images/augment.py,
the image cache in covidnet/data/image_cache.py, what is trained on (fraction, sources) in covidnet/data/training_sources.py."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from covidnet.images.augment import SourceAugment, augment_batch, augment_params, train_augment
from covidnet.images.covid_ct_layout import SPLITS, DatasetError, Sample, check_dataset, is_complete_layout, load_grey
from covidnet.images.download import download_covid_ct
from covidnet.data.image_cache import CachedImages
from covidnet.data.near_duplicates import Item, cross_split_names, find_pairs, thumbnails
from covidnet.data.near_duplicates import summary as near_duplicate_summary
from covidnet.images.preprocess import InputSpec, Prepared, Preprocess, prepare
from covidnet.data.multisource import MAIN_SOURCE, SourceItem, sampling_weights, source_items, split_by_patient
from covidnet.data.multisource import OPTIONS as SOURCE_OPTIONS
from covidnet.core.options import SEED, Rule, boolean, integer, items, optional, text
from covidnet.images.sampling import EpochSampler
from covidnet.data.training_sources import check_fraction, check_sources, stratified_subset
from covidnet.data.sets import load_set, set_config
from covidnet.images.sources.base import Record

log = logging.getLogger(__name__)
# (file, size, mtime, InputSpec) -> Prepared, for specs that segment the lungs (see prepare_file)
_PREPARED: dict[tuple, Prepared] = {}

# the data module's own conf/data keys (covidnet.core.options); preprocess, augment, multisource and training_sources own the rest
OPTIONS: dict[str, Rule] = {
    "data.root": text(),
    "data.download": boolean(),
    "data.batch_size": integer(2).because("BatchNorm needs two images per training batch"),
    "data.num_workers": integer(0),
    "data.seed": SEED,
    "data.pin_memory": optional(boolean()),
    "data.sets_root": optional(text()),
    "data.device_augment": Rule("auto, true or false", lambda v: isinstance(v, bool) or v == "auto"),
}


class CovidCTDataModule(L.LightningDataModule):
    """COVID-CT official split (COVID = 1, non-COVID = 0) with an in-memory image cache.

    Every image is decoded once, converted to grey, resized to ``image_size`` and kept as uint8.
    Training augmentation works on those cached tensors; evaluation is deterministic.
    """

    def __init__(
        self,
        root: str = "data/covid-ct",
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int = 0,
        fraction: float = 1.0,
        download: bool = False,
        normalization: str = "imagenet",
        crop_scale_min: float = 0.7,
        hflip: bool = True,
        rotate_degrees: float = 10.0,
        jitter: float = 0.1,
        augment: bool = True,
        seed: int = 0,
        pin_memory: bool | None = None,
        sources: list[str] | tuple[str, ...] = (MAIN_SOURCE,),
        test_sources: list[str] | tuple[str, ...] | None = None,
        fold: int = 0,
        n_folds: int = 2,
        slice_labels: str = "infected_only",
        balance: str = "none",
        sets_root: str | None = None,
        source_defs: dict | None = None,
        device_augment: bool | str = "auto",
        field: str = "full",
        intensity: str = "none",
        crop_margin: float = 0.05,
        source_aug: dict | None = None,
    ):
        super().__init__()
        # several sources (covidnet/data/multisource.py): plain lists, so the checkpoint records what was trained on
        # a single name is a list of one (data.sources=covid_ct), never its letters
        sources = items(sources) or [MAIN_SOURCE]
        test_sources = items(test_sources) if test_sources is not None else None  # None: the training sources
        if source_defs is not None and not isinstance(source_defs, dict):  # a DictConfig from Hydra: plain values only
            from omegaconf import OmegaConf

            source_defs = OmegaConf.to_container(source_defs, resolve=True)
        root = str(Path(os.path.expanduser(str(root))).resolve())
        if source_aug is not None:
            source_aug = dict(source_aug)  # plain values in the checkpoint
        self.save_hyperparameters()
        self.preprocess = Preprocess(normalization)  # fails early on an unknown name
        check_fraction(fraction)  # and on a bad fraction
        SOURCE_OPTIONS["data.sources"].check("data.sources", sources)
        SOURCE_OPTIONS["data.slice_labels"].check("data.slice_labels", slice_labels)
        sampling_weights([], balance)  # fails early on an unknown balance mode
        check_sources(sources, test_sources, fold, n_folds, source_defs, sets_root)  # before any image is decoded
        self.spec = InputSpec(image_size, normalization, field, intensity, crop_margin)  # fails early on a bad name
        self.source_augment = SourceAugment.from_config(source_aug)  # and on a bad strength
        # files whose lung field was not found (they fall back to the full image): name -> split
        self.lung_fallbacks: dict[str, str] = {}
        self.samples: dict[str, list[Sample]] = {}
        self.datasets: dict[str, CachedImages] = {}
        self._wrap: Callable[[str, Dataset], Dataset] | None = None  # see wrap_datasets
        self.near_duplicates: list = []  # set by setup(): near-duplicate pairs of pictures (covidnet/data/near_duplicates.py)
        self.test_near_duplicates: set[str] = set()  # test images with a near-duplicate in train or val
        # per split, in loader order: where each image came from (Item) and, for sources other than COVID-CT, its Record
        self.items: dict[str, list[SourceItem]] = {}
        self.records: dict[str, list[Record | None]] = {}
        self._device_images: torch.Tensor | None = None  # the train cache on the training device (device_augment)

    # --- preprocessing shared with CAMs and reports -------------------------------------------------
    def prepare_file(self, path: str | Path, lung_mask: bool = False) -> Prepared:
        """Any image file -> the uint8 grey tensor the cache holds, whether its lung field was found, and
        (when the spec segments, or ``lung_mask``) that field in the prepared image.

        Segmenting costs ~0.1 s an image, so results are kept for the process (the jobs of a multirun
        share them), keyed by file, its size and modification time, and the spec."""
        path = Path(path)
        if not (self.spec.needs_lungs or lung_mask):
            return prepare(load_grey(path), self.spec)
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, self.spec, lung_mask or self.spec.needs_lungs)
        hit = _PREPARED.get(key)
        if hit is None:
            hit = _PREPARED[key] = prepare(load_grey(path), self.spec, lung_mask)
        return hit

    def load_image(self, path: str | Path) -> torch.Tensor:
        """Any image file -> the uint8 grey tensor the cache holds (field and intensity applied)."""
        return self.prepare_file(path).image

    def load_grey_image(self, grey) -> torch.Tensor:
        """A float grey HxW image in [0, 1] (e.g. a windowed DICOM slice) -> the uint8 tensor the cache holds
        (the same path as files: field and intensity applied, covidnet/images/preprocess.py)."""
        return prepare(grey, self.spec).image

    def model_input(self, path: str | Path) -> torch.Tensor:
        """Any image file -> the normalised 3-channel tensor the model sees at evaluation."""
        return self.preprocess(self.load_image(path))

    def train_augment(self):
        h = self.hparams
        geometric = train_augment(h.image_size, h.crop_scale_min, h.hflip, h.rotate_degrees, h.jitter)
        if self.source_augment is None:
            return geometric
        return v2.Compose([geometric, self.source_augment])

    # --- Lightning hooks -----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        root = Path(self.hparams.root)
        # only into a missing or empty folder: a folder holding anything else gets setup()'s list of what is missing
        if not is_complete_layout(root) and self.hparams.download and not (root.is_dir() and any(root.iterdir())):
            download_covid_ct(root)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        root = Path(self.hparams.root)
        splits, cache = check_dataset(root, load=self.prepare_file)  # the layout first, naming what is missing
        self.check_near_duplicates(splits, cache)
        splits["train"] = stratified_subset(splits["train"], self.hparams.fraction, self.hparams.seed)
        self.samples = splits
        self.lung_fallbacks = {s.name: split for split in SPLITS for s in splits[split] if cache[s.path].lungs_found is False}
        images = {split: [cache[s.path].image for s in splits[split]] for split in SPLITS}
        self.items = {split: [SourceItem(MAIN_SOURCE, s.name, s.label) for s in splits[split]] for split in SPLITS}
        self.records = {split: [None] * len(splits[split]) for split in SPLITS}
        for split, pairs in self.other_source_items().items():
            for item, record in pairs:
                images[split].append(self.load_grey_image(record.load()))
                self.items[split].append(item)
                self.records[split].append(record)
        if self.lung_fallbacks:
            n = {split: sum(1 for v in self.lung_fallbacks.values() if v == split) for split in SPLITS}
            log.warning("data.field=%s: no lung field found in %d images (%s); they are used whole: %s", self.spec.field,
                        len(self.lung_fallbacks), ", ".join(f"{k} {v}" for k, v in n.items()), ", ".join(sorted(self.lung_fallbacks)))
        for split in SPLITS:
            labels = torch.tensor([it.label for it in self.items[split]], dtype=torch.float32)
            augment = self.train_augment() if split == "train" and self.hparams.augment else None
            device = split == "train" and self.uses_device_augment()
            params = functools.partial(augment_params, **self._augment_options()) if device else None
            self.datasets[split] = CachedImages(torch.stack(images[split]), labels, self.preprocess, None if device else augment, params)

    def other_source_items(self) -> dict[str, list[tuple[SourceItem, Record]]]:
        """Train and test images of every source besides COVID-CT, split by patient (``data.fold``)."""
        h = self.hparams
        out: dict[str, list[tuple[SourceItem, Record]]] = {"train": [], "test": []}
        tested = h.test_sources if h.test_sources is not None else h.sources
        for name in dict.fromkeys([*h.sources, *tested]):
            if name == MAIN_SOURCE:
                continue
            # a source defined inline (data.source_defs.<name>: kind, root, read) or an eval set, conf/eval/<name>.yaml
            defs = (h.source_defs or {}).get(name)
            records = load_set(name, defs if defs is not None else set_config(name, h.sets_root)).records
            parts = split_by_patient(records, h.fold, h.n_folds, f"data.sources: {name}")
            if name in h.sources:
                out["train"] += source_items(name, parts["train"], "train", h.slice_labels)
            if name in tested:
                out["test"] += source_items(name, parts["test"], "test", h.slice_labels)
        return out

    def test_source_names(self) -> list[str]:
        return list(dict.fromkeys(it.source for it in self.items.get("test", [])))

    # --- the GPU data path: uint8 cache on the device, augmentation there per sample in batches ------------
    def _augment_options(self) -> dict:
        h = self.hparams
        return dict(image_size=h.image_size, crop_scale_min=h.crop_scale_min, hflip=h.hflip, rotate_degrees=h.rotate_degrees, jitter=h.jitter)

    def uses_device_augment(self) -> bool:
        """data.device_augment: auto = when the trainer trains on a GPU (on the CPU the per-image path is kept)."""
        mode = self.hparams.device_augment
        if not self.hparams.augment or mode is False:
            return False
        if self.source_augment is not None:  # data.source_aug has no batched device version yet: per-image path
            return False
        if mode == "auto":
            trainer = self.trainer
            return trainer is not None and trainer.strategy.root_device.type == "cuda"
        return True

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Training batches of the device path arrive as indices, parameters and labels: made into images here."""
        if not (isinstance(batch, dict) and "augment_params" in batch):
            return batch
        idx, params, y = batch["index"], batch["augment_params"], batch["label"]
        if self._device_images is None or self._device_images.device != idx.device:
            self._device_images = self.datasets["train"].images.to(idx.device)
        grey = augment_batch(self._device_images[idx], params)
        mean, std = self.preprocess.mean.to(idx.device), self.preprocess.std.to(idx.device)
        # what Preprocess does to one image, for the batch: the same arithmetic, so the same numbers
        return (grey.float().div_(255).expand(-1, 3, -1, -1) - mean) / std, y

    def check_near_duplicates(self, splits: dict[str, list[Sample]], cache: dict) -> None:
        """Near-duplicate pictures within and across the splits (covidnet/data/near_duplicates.py): a warning, not a
        refusal; the test images with one in train/val are remembered for the clean test metrics."""
        items = [Item(s.name, s.label, split) for split in SPLITS for s in splits[split]]
        thumbs = thumbnails(torch.stack([cache[s.path].image for split in SPLITS for s in splits[split]]))
        self.near_duplicates = find_pairs(items, thumbs)
        self.test_near_duplicates = cross_split_names(self.near_duplicates, "test", ("train", "val"))
        message = near_duplicate_summary(self.near_duplicates)
        if message:
            log.warning(message)

    # --- what the loaders serve -----------------------------------------------------------------------
    def wrap_datasets(self, wrap: Callable[[str, Dataset], Dataset] | None) -> None:
        """Have the loaders serve ``wrap(split, image dataset)`` instead of each split's image dataset (e.g. cached
        frozen features, callbacks/frozen_features.py); ``None`` serves the images again. ``datasets`` keeps the
        image datasets either way, and samplers, batches and order stay the same."""
        self._wrap = wrap

    def loader_dataset(self, split: str) -> Dataset:
        """What the loaders of ``split`` read: its image dataset, or what ``wrap_datasets`` made of it."""
        if split not in self.datasets:
            raise DatasetError(f"The {split} split is not loaded; call setup() first.")
        return self.datasets[split] if self._wrap is None else self._wrap(split, self.datasets[split])

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.loader_dataset(split)
        h = self.hparams
        pin = torch.cuda.is_available() if h.pin_memory is None else h.pin_memory
        # training order and augmentation are a function of (seed, epoch): a resumed run replays them exactly
        if shuffle:
            weights = sampling_weights(self.items[split], h.balance) if self.items.get(split) else None
            sampler = EpochSampler(len(dataset), h.seed, self._train_position, weights)
        else:
            sampler = self._eval_sampler(split)
        return DataLoader(
            dataset,
            batch_size=h.batch_size,
            sampler=sampler,
            num_workers=h.num_workers,
            pin_memory=pin,
            persistent_workers=h.num_workers > 0,
            # a last batch of one image would break BatchNorm in training
            drop_last=shuffle and len(dataset) > h.batch_size,
        )

    def _eval_sampler(self, split: str) -> UnrepeatedDistributedSampler | None:
        """While a multi-process trainer runs, each rank evaluates its own share with no image repeated.

        Lightning's default DistributedSampler pads the last share with repeated images, which would count
        them twice in the test metrics. Outside a running trainer (e.g. predictions afterwards) one process
        reads the whole split.
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1 or trainer.state.finished:
            return None
        return UnrepeatedDistributedSampler(self.datasets[split], num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)

    def _train_position(self) -> tuple[int, int]:
        """(epoch, training samples already consumed in it, over all ranks): where a resumed epoch starts."""
        trainer = self.trainer
        if trainer is None or not trainer.training:  # iterated outside fitting: the whole epoch-0 order
            return 0, 0
        # `processed`, not `completed`: a checkpoint written in on_train_batch_end counts its batch as processed
        # only, and a multi-worker loader asks for indices before Lightning adjusts the counters on restart
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return trainer.current_epoch, done * self.hparams.batch_size * trainer.world_size

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def split_names(self, split: str) -> list[str]:
        """File names of a split, in loader order (the order of predictions)."""
        return [it.name for it in self.items[split]]
