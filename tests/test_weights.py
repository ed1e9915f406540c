"""init=imagenet without network: stand-in weights in a temporary torch hub cache, or at model.weights_path."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torchvision import models

from covidnet.models.backbones import build_backbone
from covidnet.models.archs import imagenet_weights_file
from covidnet.models.inits import apply_arch_defaults
from covidnet.models.weights_io import WeightsError

CONF = Path(__file__).resolve().parents[1] / "conf"
HUB_FILE = "resnet18-f37072fd.pth"  # torchvision's file name for ResNet18_Weights.IMAGENET1K_V1


def stand_in_weights(seed: int = 7) -> dict[str, torch.Tensor]:
    """A ResNet-18 ImageNet-shaped state dict with recognisable random values (1000-class head included)."""
    torch.manual_seed(seed)
    return models.resnet18(weights=None).state_dict()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch hub cache under a temporary TORCH_HOME, and any download attempt fails at once."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError(f"no network in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def assert_backbone_is(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = net.state_dict()
    backbone = {k for k in state if not k.startswith("fc.")}
    assert backbone == {k for k in own if not k.startswith("fc.")}
    for k in backbone:
        assert torch.equal(own[k], state[k]), k
    assert net.fc.out_features == 1
    assert net.fc.weight.shape == (1, 512)


def test_the_expected_file_is_in_the_torch_hub_cache(offline):
    assert imagenet_weights_file("resnet18") == offline / HUB_FILE


def test_imagenet_weights_from_the_torch_hub_cache(offline):
    state = stand_in_weights()
    offline.mkdir(parents=True)
    torch.save(state, offline / HUB_FILE)
    assert_backbone_is(build_backbone("resnet18", "imagenet"), state)


def test_imagenet_weights_from_weights_path(offline, tmp_path):
    state = stand_in_weights(seed=3)
    path = tmp_path / "elsewhere" / "my-resnet18.pth"
    path.parent.mkdir()
    torch.save(state, path)
    assert_backbone_is(build_backbone("resnet18", "imagenet", weights_path=str(path)), state)
    assert not (offline / HUB_FILE).exists()  # nothing was fetched into the cache


def test_scratch_ignores_the_cached_weights(offline):
    state = stand_in_weights()
    offline.mkdir(parents=True)
    torch.save(state, offline / HUB_FILE)
    net = build_backbone("resnet18", "scratch")
    assert not torch.equal(net.conv1.weight, state["conv1.weight"])
    assert net.fc.out_features == 1


def test_config_init_imagenet_with_weights_path_builds_that_backbone(offline, tmp_path):
    """The Hydra route users take: init=imagenet model.weights_path=... (and the backbone gets a lower lr)."""
    state = stand_in_weights(seed=5)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = apply_arch_defaults(compose(config_name="train", overrides=["init=imagenet", f"model.weights_path={path}"]))
    assert cfg.model.init == "imagenet" and cfg.data.normalization == "imagenet"
    model = instantiate(cfg.model)
    assert_backbone_is(model.net, state)
    assert model.hparams.init == "imagenet" and model.hparams.weights_path == str(path)
    lrs = {g["name"]: g["lr"] for g in model.configure_optimizers()["optimizer"].param_groups}
    assert lrs["backbone"] == pytest.approx(lrs["head"] * cfg.model.backbone_lr_scale) and lrs["backbone"] < lrs["head"]


def test_missing_weights_name_the_expected_file(offline):
    with pytest.raises(WeightsError) as err:
        build_backbone("resnet18", "imagenet")
    message = str(err.value)
    assert str(offline / HUB_FILE) in message
    assert "model.weights_path" in message


def test_missing_weights_path_names_that_path(offline, tmp_path):
    missing = tmp_path / "nowhere" / HUB_FILE
    with pytest.raises(WeightsError, match=str(missing)):
        build_backbone("resnet18", "imagenet", weights_path=str(missing))
