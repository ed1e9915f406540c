"""The architecture registry (covidnet/models/archs.py): a registered architecture is picked up by every consumer (model
building, the config check, the default normalisation, the CAM layer lookup by output stride) without another file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from covidnet.models.archs import ARCHS, LAYER_STRIDES, Arch, get_arch, register, unregister
from covidnet.models.backbones import OPTIONS, build_backbone
from covidnet.explain.cam import LAYERS, compute_cams, target_layer
from covidnet.models.inits import apply_arch_defaults
from covidnet.models.model import CovidClassifier
from covidnet.models.weights_io import WeightsError


class Tiny(nn.Module):
    """Two convolutions of stride 4: maps at output stride 4 and 16, a 1000-class head like an ImageNet network's."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(4, 8, 3, stride=4, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 1000)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.down(self.stem(x))), 1))


@pytest.fixture
def tiny():
    arch = register(Arch("tiny", Tiny, ("stem", "down", "pool"), "fc", {4: "stem", 16: "down"}, {"backbone": ("fc",)},
                         normalization="unit", input_size=64))
    try:
        yield arch
    finally:
        unregister("tiny")
    assert "tiny" not in ARCHS


def test_a_registered_architecture_is_built_and_trained_as_configured(tiny):
    net = build_backbone("tiny", "scratch")
    assert isinstance(net, Tiny) and net.fc.out_features == 1  # the head replaced by one logit
    model = CovidClassifier(arch="tiny", init="scratch", freeze="backbone").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.head(model.features(x)), model(x))
    assert {n.split(".")[0] for n, p in model.net.named_parameters() if p.requires_grad} == {"fc"}
    assert OPTIONS["model.arch"].ok("tiny")  # the config check knows it
    cfg = {"model": {"arch": "tiny"}, "data": {"normalization": None}}
    assert apply_arch_defaults(cfg)["data"]["normalization"] == "unit"  # its weights' normalisation is the default
    with pytest.raises(WeightsError, match="has no ImageNet weights; use init=scratch"):
        build_backbone("tiny", "imagenet")


def test_the_cam_layer_of_a_registered_architecture_is_found_by_output_stride(tiny):
    model = CovidClassifier(arch="tiny", init="scratch").eval()
    assert tiny.cam_layer("layer3") == "down" and LAYER_STRIDES["layer3"] == 16
    assert target_layer(model, "layer3") is model.net.down[-1]
    assert target_layer(model, "layer1") is model.net.stem[-1]
    with pytest.raises(ValueError, match="CAM layer='layer4': Tiny has no such map"):
        target_layer(model, "layer4")  # no map of stride 32
    maps = compute_cams(model, torch.rand(2, 3, 64, 64), "gradcam", [1, 0], "layer3")
    assert maps.shape == (2, 64, 64)


def test_one_record_per_name_and_one_stride_map():
    with pytest.raises(ValueError, match="model.arch=resnet18 is registered already"):
        register(get_arch("resnet18"))
    with pytest.raises(ValueError, match="Unknown model.arch='tiny'"):
        get_arch("tiny")
    assert LAYERS == tuple(LAYER_STRIDES)  # cam.layer's choices are the stride map's names
    assert all(set(a.cam_layers) <= set(LAYER_STRIDES.values()) for a in ARCHS.values())
