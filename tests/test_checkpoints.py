"""covidnet.rundirs.run_checkpoints decides which checkpoint stands for a run; covidnet.trained.checkpoint.load_model rebuilds it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from covidnet.trained.checkpoint import CheckpointError, load_model
from covidnet.data.datamodule import CovidCTDataModule
from covidnet.models.model import CovidClassifier
from covidnet.images.preprocess import InputSpec
from covidnet.rundirs.run_checkpoints import NoCheckpointError, best_checkpoint, resolve_checkpoints, run_of


def checkpoint(path: Path, dm: bool = True, **data) -> Path:
    torch.manual_seed(0)
    model = CovidClassifier(arch="resnet18", init="scratch")
    hparams = dict(CovidCTDataModule(root=str(path.parent), **data).hparams) if dm else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "datamodule_hyper_parameters": hparams}, path)
    return path


def test_load_model_gives_the_model_and_the_input_it_was_trained_on(tmp_path):
    model, spec = load_model(checkpoint(tmp_path / "m.ckpt", image_size=48, normalization="unit"))
    assert not model.training and spec == InputSpec(image_size=48, normalization="unit")
    with pytest.raises(CheckpointError, match="no data-module hyperparameters"):
        load_model(checkpoint(tmp_path / "bare.ckpt", dm=False))


def test_a_run_stands_for_its_best_checkpoint_found_inside_it(tmp_path):
    run = tmp_path / "sweep" / "seed=0"
    best = checkpoint(run / "checkpoints" / "epoch=001.ckpt")
    checkpoint(run / "checkpoints" / "last.ckpt")
    assert run_of(best) is None  # not finished: no metrics.json
    (run / "metrics.json").write_text(json.dumps({"best_checkpoint": "/elsewhere/checkpoints/epoch=001.ckpt"}))
    assert run_of(best).path == run and best_checkpoint(run) == best  # the recorded path's name, inside this run
    chosen, skipped = resolve_checkpoints(str(tmp_path / "sweep"))
    assert [c.path for c in chosen] == [best] and skipped == []
    (tmp_path / "sweep" / "seed=1" / "checkpoints").mkdir(parents=True)
    with pytest.raises(NoCheckpointError, match="unfinished"):
        best_checkpoint(tmp_path / "sweep" / "seed=1")
