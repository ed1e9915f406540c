"""Run directories as training leaves them, without training: a checkpoint with random weights, a run directory
naming it, a sweep job's files; and the reader of the CSV files the tools write. For tests of what reads runs
(evaluate, the report, ensembles), which need the layout, not a trained model."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf

from covidnet.data.datamodule import CovidCTDataModule
from covidnet.models.model import CovidClassifier


def make_checkpoint(path: Path, image_size: int = 32, normalization: str = "imagenet", seed: int = 0, **data) -> Path:
    """A covidnet checkpoint (random weights) with the data-module hyperparameters train.py stores (``data``: more of them)."""
    torch.manual_seed(seed)
    model = CovidClassifier(arch="resnet18", init="scratch")
    dm = CovidCTDataModule(root=str(path.parent), image_size=image_size, normalization=normalization, **data)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "datamodule_hyper_parameters": dict(dm.hparams)}, path)
    return path


def make_run(run: Path, seed: int = 0, **kwargs) -> Path:
    """A training run directory as train.py leaves it (metrics.json naming the best checkpoint)."""
    ckpt = make_checkpoint(run / "checkpoints" / "epoch=001-val_auroc=0.5000.ckpt", seed=seed, **kwargs)
    shutil.copy(ckpt, run / "checkpoints" / "last.ckpt")
    (run / "metrics.json").write_text(json.dumps({"best_checkpoint": str(ckpt), "seed": seed, "init": "scratch", "test": {}}))
    return run


def fake_job(job: Path, overrides: list[str], labels, probs, extra: dict | None = None) -> None:
    """A job directory with the files covidnet.apps.train writes (no training: for layouts only)."""
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    (job / "metrics.json").write_text(json.dumps({"best_epoch": 1, "fit_seconds": 1.0, **(extra or {})}))
    with open(job / "predictions_test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label", "prob_covid"])
        w.writerows((f"img{i}.png", y, p) for i, (y, p) in enumerate(zip(labels, probs)))


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
