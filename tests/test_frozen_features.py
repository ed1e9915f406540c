"""Frozen-feature caching (callbacks/frozen_features.py): same logits as the whole network, only trained
parameters change, normal checkpoints, clear errors where caching would be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from covidnet.callbacks import CamLogger
from covidnet.callbacks.frozen_features import FeatureDataset, FrozenFeatureCache
from covidnet.trained.checkpoint import load_checkpoint
from covidnet.data.datamodule import CovidCTDataModule
from covidnet.models.model import CovidClassifier
from covidnet.apps.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"
QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)


def tiny_model(freeze: str) -> CovidClassifier:
    torch.manual_seed(0)
    return CovidClassifier(arch="resnet18", freeze=freeze, optimizer=lambda params: torch.optim.SGD(params, lr=0.1))


def tiny_data(root: Path, augment: bool = False) -> CovidCTDataModule:
    return CovidCTDataModule(root=str(root), image_size=32, batch_size=8, normalization="unit", augment=augment)


@pytest.mark.parametrize("freeze", ["backbone", "up_to_layer4"])
def test_cached_features_give_the_whole_networks_logits(synthetic_root, tmp_path, freeze):
    model, dm = tiny_model(freeze), tiny_data(synthetic_root)
    dm.setup()
    images = torch.stack([dm.preprocess(img) for img in dm.datasets["val"].images])
    cache = FrozenFeatureCache(enabled=True, cache_dir=str(tmp_path), batch_size=5)  # batches unlike the loader's
    for _ in range(2):  # computed, then read back from cache_dir
        features, labels = cache.compute(model, dm.datasets["val"])
        model.eval()
        with torch.inference_mode():
            torch.testing.assert_close(model.head(features), model(images))
        assert torch.equal(labels, dm.datasets["val"].labels)
    assert features.shape[1] != 3 and len(list(tmp_path.glob("*.pt"))) == 1
    # train mode: the frozen part keeps its BatchNorm statistics (eval), so features stay valid
    model.train()
    assert not model.net.layer1.training and model.net.fc.training
    with torch.no_grad():
        torch.testing.assert_close(model.features(images), features)


@pytest.mark.parametrize("freeze", ["backbone", "up_to_layer4"])
def test_training_on_cached_features_changes_only_trained_parameters(synthetic_root, tmp_path, freeze):
    model, dm = tiny_model(freeze), tiny_data(synthetic_root)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = L.Trainer(max_epochs=1, callbacks=[FrozenFeatureCache(enabled=True)], **QUIET)
    trainer.fit(model, datamodule=dm)
    served = dm.loader_dataset("train")  # the data module's hook serves the features; its image datasets stay
    assert isinstance(served, FeatureDataset) and served.features is not None and served.source is dm.datasets["train"]
    trained = ("net.fc.",) if freeze == "backbone" else ("net.fc.", "net.layer4.")
    for name, value in model.state_dict().items():
        if not name.startswith("net.") or "num_batches_tracked" in name:
            continue
        if name.startswith(trained):
            if name.endswith(("weight", "bias")):
                assert not torch.equal(value, before[name]), f"{name} did not train"
        else:
            assert torch.equal(value, before[name]), f"frozen {name} changed"
    # a normal whole-network checkpoint: it rebuilds the model, which takes images
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_checkpoint(path)[0]
    assert set(loaded.state_dict()) == set(model.state_dict())
    images = torch.stack([dm.preprocess(img) for img in dm.datasets["test"].images])
    with torch.inference_mode():
        torch.testing.assert_close(loaded(images), model.eval()(images))


def test_caching_refuses_augmentation_unfrozen_models_and_cams(synthetic_root):
    with pytest.raises(ValueError, match="data.augment=false"):
        L.Trainer(max_epochs=1, callbacks=[FrozenFeatureCache(enabled=True)], **QUIET).fit(tiny_model("backbone"), datamodule=tiny_data(synthetic_root, augment=True))
    with pytest.raises(ValueError, match="model.freeze=backbone or up_to_layer4"):
        L.Trainer(max_epochs=1, callbacks=[FrozenFeatureCache(enabled=True)], **QUIET).fit(tiny_model("none"), datamodule=tiny_data(synthetic_root))
    with pytest.raises(ValueError, match="callbacks.cam=null"):  # CAMs need images, not features
        L.Trainer(max_epochs=1, callbacks=[FrozenFeatureCache(enabled=True), CamLogger(k=1)], **QUIET).fit(tiny_model("backbone"), datamodule=tiny_data(synthetic_root))
    flipped = CovidClassifier(arch="resnet18", freeze="backbone", tta_flip=True, optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    with pytest.raises(ValueError, match="model.tta_flip=false"):  # features of one view cannot be flip-averaged
        L.Trainer(max_epochs=1, callbacks=[FrozenFeatureCache(enabled=True)], **QUIET).fit(flipped, datamodule=tiny_data(synthetic_root))


def test_experiment_config_trains_tests_and_predicts_on_cached_features(synthetic_root, tmp_path):
    overrides = [
        "experiment=ct_transfer", "model.arch=resnet18", "model.freeze=up_to_layer4", f"data.root={synthetic_root}",
        "data.image_size=32", "data.batch_size=8", "trainer.max_epochs=1", "trainer.accelerator=cpu",
        f"paths.log_dir={tmp_path}", "+trainer.enable_progress_bar=false",
        # fp32: the predictions written from cached features are compared exactly with an fp32 full forward
        "trainer.precision=32-true", "channels_last=false",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, f"paths.output_dir={tmp_path / 'run'}"])
    assert cfg.data.augment is False and cfg.callbacks.cam is None and cfg.callbacks.frozen_features.enabled
    metrics = train(cfg)
    assert 0 <= metrics["test"]["test/auroc"] <= 1
    assert len(list((tmp_path / "frozen_features").glob("*.pt"))) == 3  # stem..layer3 output of train, val, test
    # the best checkpoint, fed images, predicts what train() wrote from cached features
    best = load_checkpoint(metrics["best_checkpoint"])[0]
    dm = instantiate(cfg.data)
    dm.setup()
    x = torch.stack([dm.preprocess(img) for img in dm.datasets["test"].images])
    with torch.inference_mode():
        probs = torch.sigmoid(best(x))
    rows = (tmp_path / "run" / "predictions_test.csv").read_text().splitlines()[1:]
    torch.testing.assert_close(probs, torch.tensor([float(r.split(",")[2]) for r in rows]), atol=2e-6, rtol=0)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
