"""Train metrics from outputs kept on the device (one update per epoch) and the non-finite-loss check."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import binary_accuracy, binary_auroc

from covidnet.models import model as model_module
from covidnet.models.model import CovidClassifier


def tiny_fit(model: CovidClassifier, loader: DataLoader, epochs: int = 1) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, train_dataloaders=loader)
    return trainer


@pytest.fixture
def data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, 32, 32, generator=g)
    y = (torch.arange(24) % 2).float()
    return DataLoader(TensorDataset(x, y), batch_size=6, shuffle=False)


def test_epoch_train_metrics_equal_those_of_the_epochs_outputs(data):
    torch.manual_seed(0)
    # lr 0: the weights never change, so each batch's train-mode output (BatchNorm on batch statistics) can be redone
    model = CovidClassifier(optimizer=functools.partial(torch.optim.SGD, lr=0.0))
    updates = []
    original = model.train_metrics.update
    model.train_metrics.update = lambda *a, **k: (updates.append(len(a[0])), original(*a, **k))[1]
    trainer = tiny_fit(model, data, epochs=2)
    assert updates == [24, 24]  # one update per epoch with all its images, none per step
    model.train()
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in data])
    y = torch.cat([y for _, y in data])
    probs = torch.sigmoid(logits)
    m = trainer.callback_metrics
    assert m["train/acc"].item() == pytest.approx(binary_accuracy(probs, y.long()).item(), abs=1e-6)
    assert m["train/auroc"].item() == pytest.approx(binary_auroc(probs, y.long()).item(), abs=1e-6)
    assert m["train/loss"].item() == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(logits, y).item(), rel=1e-5)
    assert model._train_outputs == []  # nothing kept past the epoch


def nan_loss(step: int):
    return torch.tensor(float("nan")) if step == 2 else torch.tensor(0.5)


def test_nan_loss_is_caught_at_its_step_on_the_cpu():
    model = CovidClassifier()
    model._check_finite(nan_loss(0), 0)
    with pytest.raises(FloatingPointError, match=r"Non-finite training loss \(nan\) at epoch 0, global step 0, batch 2"):
        model._check_finite(nan_loss(2), 2)


def test_on_an_accelerator_the_check_reads_the_previous_steps_flag(monkeypatch):
    monkeypatch.setattr(model_module, "_sync_is_free", lambda device: False)
    model = CovidClassifier()
    model._check_finite(nan_loss(2), 2)  # not read yet: reading it would wait for the device
    with pytest.raises(FloatingPointError, match=r"\(nan\) at epoch 0, global step 0, batch 2"):
        model._check_finite(nan_loss(3), 3)  # the next step reads it
    model._check_finite(nan_loss(2), 2)
    with pytest.raises(FloatingPointError, match="batch 2"):
        model.on_train_epoch_end()  # and the epoch's end reads the last one
