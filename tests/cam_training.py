"""One tiny blob-detecting model shared by the CAM and visualize tests (trained once per session)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from covidnet.data.datamodule import CovidCTDataModule
from covidnet.models.model import CovidClassifier
from synthetic import make_dataset

IMAGE_SIZE = 64  # layer4 is a 2 x 2 grid at this size
COUNTS = {"train": 24, "val": 6, "test": 10}  # per class; the test split allows n_per_class=10


@dataclass
class BlobRun:
    root: Path  # synthetic COVID-CT layout
    centres: dict  # file name -> blob centre (y, x) as fractions of the image
    ckpt: Path  # checkpoint of the trained model, with its data-module hyperparameters
    model: CovidClassifier  # the trained model, eval mode
    datamodule: CovidCTDataModule


_CACHE: dict[str, BlobRun] = {}


def blob_run(tmp_path_factory) -> BlobRun:
    """Train resnet18 from scratch for a few epochs on bright-blob data (COVID = blob); cached."""
    if "run" not in _CACHE:
        base = tmp_path_factory.mktemp("blob")
        root = base / "covid-ct"
        centres = make_dataset(root, COUNTS, seed=1)
        L.seed_everything(0)
        dm = CovidCTDataModule(root=str(root), image_size=IMAGE_SIZE, batch_size=16, crop_scale_min=0.9, rotate_degrees=0, jitter=0)
        model = CovidClassifier(arch="resnet18", init="scratch", optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
        trainer = L.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(model, datamodule=dm)
        ckpt = base / "blob.ckpt"
        trainer.save_checkpoint(ckpt)
        model.eval()
        _CACHE["run"] = BlobRun(root, centres, ckpt, model, dm)
    return _CACHE["run"]
