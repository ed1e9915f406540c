"""The test metrics come from the best validation epoch, also when it is not the last one.

A three-epoch run on tiny synthetic images; at the last epoch's validation a callback negates the
head (P(COVID) becomes 1 - P), so the last epoch is certainly the worst on validation AUROC and the
model in memory at the end of fitting is not the best one. train() must test the best checkpoint.
"""

from __future__ import annotations

import csv
import json

import lightning as L
import numpy as np
import pytest
import torch

from covidnet.trained.checkpoint import load_checkpoint
from covidnet.data.datamodule import CovidCTDataModule
from covidnet.models.predict import predict_probs
from covidnet.metrics.stats import binary_metrics
from synthetic import make_dataset
from train_configs import tiny_cfg

EPOCHS = 3


class InvertHeadAtLastValidation(L.Callback):
    """Negates the one-logit head just before the last epoch's validation: that epoch's val AUROC = 1 - AUROC."""

    def on_validation_epoch_start(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.current_epoch == trainer.max_epochs - 1:
            with torch.no_grad():
                pl_module.net.fc.weight.neg_()
                pl_module.net.fc.bias.neg_()


def ckpt_probs(path):
    model, dm_hparams = load_checkpoint(path)
    dm = CovidCTDataModule(**dm_hparams)
    dm.setup("test")
    probs, labels = predict_probs(model, dm.test_dataloader())
    return np.asarray(probs), np.asarray(labels), dm.split_names("test")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from covidnet.apps.train import train

    root = tmp_path_factory.mktemp("best-data") / "covid-ct"
    make_dataset(root, {"train": 8, "val": 4, "test": 4}, seed=2)  # small: three epochs in seconds
    out = tmp_path_factory.mktemp("best")
    cfg = tiny_cfg(root, out, f"trainer.max_epochs={EPOCHS}", "model.optimizer.lr=1e-3",
                   "+callbacks.invert._target_=test_best_checkpoint.InvertHeadAtLastValidation",
                   # fp32: the written predictions and test metrics are compared exactly with an fp32 recomputation
                   "trainer.precision=32-true", "channels_last=false")
    return train(cfg), out


def test_best_epoch_is_not_the_last_and_the_test_uses_it(run):
    metrics, out = run
    assert metrics["epochs_trained"] == EPOCHS
    assert metrics["best_epoch"] is not None and metrics["best_epoch"] < EPOCHS - 1
    assert metrics["best_val_score"] > 0.5  # the inverted last epoch scored below 0.5, so it lost

    best_probs, labels, names = ckpt_probs(metrics["best_checkpoint"])
    last_probs, _, _ = ckpt_probs(out / "checkpoints" / "last.ckpt")
    with open(out / "predictions_test.csv") as f:
        rows = list(csv.DictReader(f))
    written = np.array([float(r["prob_covid"]) for r in rows])
    assert [r["file"] for r in rows] == names

    # predictions_test.csv and metrics.json's test metrics are the best checkpoint's ...
    assert written == pytest.approx(best_probs, abs=1e-5)
    best = binary_metrics(labels, best_probs)
    assert metrics["test"]["test/auroc"] == pytest.approx(float(best["auroc"]), abs=1e-6)
    assert metrics["test"]["test/acc"] == pytest.approx(float(best["acc"]), abs=1e-6)
    # ... and not the last one's, which differ (its head is inverted)
    assert np.abs(written - last_probs).max() > 0.05
    assert float(binary_metrics(labels, last_probs)["auroc"]) != pytest.approx(metrics["test"]["test/auroc"], abs=1e-3)
    # the clean test metrics are reported beside the full ones, on the test images without a near-duplicate
    # in train/val (blobs at nearly the same place can make two synthetic images near-duplicates)
    clean = metrics["test_without_near_duplicates"]
    assert set(clean["excluded"]) <= set(names) and clean["n_images"] == len(names) - len(clean["excluded"])
    keep = np.array([n not in clean["excluded"] for n in names])
    assert clean["test/auroc"] == pytest.approx(float(binary_metrics(labels[keep], best_probs[keep])["auroc"]), abs=1e-5)
    assert json.loads((out / "metrics.json").read_text())["best_epoch"] == metrics["best_epoch"]
