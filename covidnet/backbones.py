"""ResNet backbones with one output logit, initialised as the init registry (covidnet/inits.py) says."""

from __future__ import annotations

from torch import nn
from torchvision import models

from covidnet.inits import INITS, get_init, imagenet_weights_file
from covidnet.weights_io import WeightsError, load_backbone_weights, read_state_dict

# Names other modules (and older code) import from here; each lives in its own module.
__all__ = ["ARCHS", "INITS", "WeightsError", "build_resnet", "imagenet_weights_file", "read_state_dict"]

ARCHS = {
    "resnet18": models.resnet18,
    "resnet50": models.resnet50,
    "resnet152": models.resnet152,
}


def build_resnet(arch: str, init: str = "scratch", weights_path: str | None = None) -> nn.Module:
    """A torchvision ResNet whose ``fc`` is replaced by one logit (P(COVID) = sigmoid(logit))."""
    if arch not in ARCHS:
        raise ValueError(f"Unknown model.arch={arch!r}; choose one of {', '.join(ARCHS)}.")
    spec = get_init(init)
    spec.check_arch(arch)
    net = ARCHS[arch](weights=None)
    loaded = spec.load(arch, weights_path)
    if loaded is not None:
        state, source = loaded
        load_backbone_weights(net, state, source)
    net.fc = nn.Linear(net.fc.in_features, 1)
    return net
