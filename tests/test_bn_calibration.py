"""BatchNorm statistics of frozen random layers estimated on the training images (model.calibrate_bn,
covidnet/models/bn_calibration.py): the random-features baseline is broken without it, the statistics are those of the
training images (and only those), and a resumed run keeps them."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

import covidnet.models.model
from covidnet.callbacks import FrozenFeatureCache
from covidnet.data.datamodule import CovidCTDataModule
from covidnet.models.model import CovidClassifier

QUIET = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False}


def random_frozen(freeze: str = "backbone", arch: str = "resnet18", calibrate_bn: bool = True) -> CovidClassifier:
    torch.manual_seed(0)
    return CovidClassifier(arch=arch, freeze=freeze, calibrate_bn=calibrate_bn, optimizer=lambda params: torch.optim.SGD(params, lr=0.01))


def data(root, augment: bool = False) -> CovidCTDataModule:
    dm = CovidCTDataModule(root=str(root), image_size=32, batch_size=8, normalization="unit", augment=augment)
    dm.setup()
    return dm


def split_images(dm: CovidCTDataModule, split: str) -> torch.Tensor:
    ds = dm.datasets[split]
    ds = getattr(ds, "source", ds)
    return torch.stack([dm.preprocess(img) for img in ds.images])


def frozen_bn(model: CovidClassifier) -> dict[str, _BatchNorm]:
    return {n: m for n, m in model.net.named_modules() if isinstance(m, _BatchNorm) and not n.startswith(("fc", "layer4") if model.hparams.freeze == "up_to_layer4" else "fc")}


def bn_state(model: CovidClassifier) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "bn_calibrated" in k}


def test_frozen_random_resnet_outputs_are_constant_without_calibration_and_spread_with_it(synthetic_root):
    dm = data(synthetic_root)
    x = split_images(dm, "train")
    model = random_frozen().eval()
    with torch.no_grad():
        before = model(x)
    model.calibrate_batchnorm([x[i : i + 8] for i in range(0, len(x), 8)])
    with torch.no_grad():
        after = model(x)
    # same head, same images: with placeholder statistics (mean 0, var 1) the logit hardly depends on the image
    # (measured: spread 0.011 before, 0.9 after); ResNet-152 saturates outright (the slow test below)
    assert after.std() > 20 * before.std() and after.std() > 0.2
    assert bool(model.bn_calibrated)


@pytest.mark.slow
def test_frozen_random_resnet152_saturates_without_calibration(synthetic_root):
    """The issue-13 failure on its own architecture: every P(COVID) is exactly 0 or 1 before, not after."""
    dm = data(synthetic_root)
    x = split_images(dm, "train")[:16]
    model = random_frozen(arch="resnet152").eval()
    with torch.no_grad():
        before = torch.sigmoid(model(x))
    assert bool(((before == 0) | (before == 1)).all()) and before.std() == 0
    model.calibrate_batchnorm([x])
    with torch.no_grad():
        after = torch.sigmoid(model(x))
    assert after.std() > 0 and not bool(((after == 0) | (after == 1)).all())


@pytest.mark.parametrize("freeze", ["backbone", "up_to_layer4"])
def test_running_statistics_are_the_batch_statistics_of_the_training_images(synthetic_root, freeze):
    dm = data(synthetic_root)
    x = split_images(dm, "train")
    model = random_frozen(freeze)
    # independent reference: each frozen BatchNorm in training mode with momentum 1 stores its batch's statistics
    reference = copy.deepcopy(model)
    for m in frozen_bn(reference).values():
        m.train()
        m.momentum = 1.0
    with torch.no_grad():
        reference.features(x)
    trained_before = {k: v.clone() for k, v in model.net.fc.state_dict().items()}
    layer4_before = bn_state(model)
    assert model.calibrate_batchnorm([x]) == len(x)  # one batch holding every training image
    ref, got = frozen_bn(reference), frozen_bn(model)
    assert len(got) > 10
    for name, m in got.items():
        torch.testing.assert_close(m.running_mean, ref[name].running_mean, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(m.running_var, ref[name].running_var, rtol=1e-4, atol=1e-5, msg=name)
        assert not m.training  # frozen layers back in eval mode
    # trained layers are left alone
    for k, v in model.net.fc.state_dict().items():
        assert torch.equal(v, trained_before[k])
    if freeze == "up_to_layer4":
        for k, v in bn_state(model).items():
            if k.startswith("net.layer4."):
                assert torch.equal(v, layer4_before[k]), k
    # uneven batches give the exact statistics too where batching cannot matter: the first layer's input
    model2 = random_frozen(freeze)
    model2.calibrate_batchnorm([x[i : i + 5] for i in range(0, len(x), 5)])
    conv1 = model2.net.conv1(x).double()
    torch.testing.assert_close(model2.net.bn1.running_mean, conv1.mean((0, 2, 3)).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model2.net.bn1.running_var, conv1.var((0, 2, 3)).float(), rtol=1e-5, atol=1e-6)


def test_calibration_when_fitting_uses_only_the_training_images_without_augmentation(synthetic_root):
    dm = data(synthetic_root, augment=True)  # augmentation on: the calibration must still see the plain images
    model = random_frozen("backbone")
    L.Trainer(max_epochs=1, enable_checkpointing=False, **QUIET).fit(model, datamodule=dm)
    assert bool(model.bn_calibrated)
    with torch.no_grad():
        train_conv1 = model.net.conv1(split_images(dm, "train")).double()
        all_conv1 = model.net.conv1(torch.cat([split_images(dm, s) for s in ("train", "val", "test")])).double()
    torch.testing.assert_close(model.net.bn1.running_mean, train_conv1.mean((0, 2, 3)).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.net.bn1.running_var, train_conv1.var((0, 2, 3)).float(), rtol=1e-5, atol=1e-6)
    # the check can tell: validation and test images would have moved the statistics
    assert not torch.allclose(model.net.bn1.running_var, all_conv1.var((0, 2, 3)).float(), rtol=1e-3, atol=0)


def test_calibration_is_idempotent_and_a_resumed_run_keeps_the_checkpoints_statistics(synthetic_root, tmp_path, monkeypatch):
    dm = data(synthetic_root)
    x = split_images(dm, "train")
    model = random_frozen("up_to_layer4")
    model.calibrate_batchnorm([x[i : i + 8] for i in range(0, len(x), 8)])
    once = bn_state(model)
    model.calibrate_batchnorm([x[i : i + 8] for i in range(0, len(x), 8)])  # again: overwrites, never accumulates
    for k, v in bn_state(model).items():
        assert torch.equal(v, once[k]), k

    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    model = random_frozen("up_to_layer4")
    L.Trainer(max_epochs=1, callbacks=[ckpt], **QUIET).fit(model, datamodule=data(synthetic_root))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert bool(saved["bn_calibrated"]) and not torch.equal(saved["net.bn1.running_var"], torch.ones_like(saved["net.bn1.running_var"]))

    calls = []
    real = covidnet.models.model.estimate_batchnorm_statistics
    monkeypatch.setattr(covidnet.models.model, "estimate_batchnorm_statistics", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = random_frozen("up_to_layer4")  # fresh random model: the checkpoint must supply the statistics
    L.Trainer(max_epochs=2, enable_checkpointing=False, **QUIET).fit(
        resumed, datamodule=data(synthetic_root), ckpt_path=tmp_path / "last.ckpt", weights_only=True
    )
    assert calls == []  # not estimated again
    for name, m in frozen_bn(resumed).items():
        assert torch.equal(m.running_mean, saved[f"net.{name}.running_mean"]), name
        assert torch.equal(m.running_var, saved[f"net.{name}.running_var"]), name


def test_models_without_calibrate_bn_keep_their_statistics(synthetic_root):
    model = random_frozen("backbone", calibrate_bn=False)
    before = bn_state(model)
    L.Trainer(max_epochs=1, enable_checkpointing=False, **QUIET).fit(model, datamodule=data(synthetic_root))
    assert "bn_calibrated" not in model.state_dict()
    for k, v in bn_state(model).items():
        if k.startswith(("net.layer", "net.bn1")):
            assert torch.equal(v, before[k]), k
    # nothing frozen: nothing to estimate
    model = random_frozen("none")
    assert not model.needs_bn_calibration()
    with pytest.raises(ValueError, match="needs covidnet's data module"):  # and without images to estimate them on
        L.Trainer(max_epochs=1, enable_checkpointing=False, **QUIET).fit(random_frozen("backbone"), train_dataloaders=data(synthetic_root).train_dataloader())


def test_frozen_feature_cache_computes_features_from_calibrated_weights(synthetic_root):
    dm = data(synthetic_root)
    model = random_frozen("backbone")
    # the cache's on_fit_start runs before the model's: it has the statistics estimated first
    L.Trainer(max_epochs=1, callbacks=[FrozenFeatureCache(enabled=True)], enable_checkpointing=False, **QUIET).fit(model, datamodule=dm)
    reference = random_frozen("backbone")
    x = split_images(dm, "train")
    reference.calibrate_batchnorm([x[i : i + 32] for i in range(0, len(x), 32)])
    with torch.no_grad():
        torch.testing.assert_close(dm.loader_dataset("train").features, reference.eval().features(x))
