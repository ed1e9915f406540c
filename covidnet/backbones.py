"""ResNet backbones with one output logit, initialised at random or from pretrained weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from covidnet.checkpoint_io import load_error_reason
from covidnet.errors import UserError

ARCHS = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
    "resnet152": (models.resnet152, models.ResNet152_Weights.IMAGENET1K_V1),
}
INITS = ("scratch", "imagenet", "ct")
# init -> the only architecture its weights exist for (ct: a CT encoder that is a ResNet-152)
INIT_ARCH = {"ct": "resnet152"}


class WeightsError(UserError, ValueError):
    """Pretrained weights are missing or do not fit the architecture; the message says how to fix it."""


def imagenet_weights_file(arch: str) -> Path:
    """Where torchvision looks for (and downloads) the ImageNet weights of ``arch``."""
    url = ARCHS[arch][1].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a weights file (a plain state dict or one under ``state_dict``), loaded safely."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"Weights file not found: {path}. Check model.weights_path.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise WeightsError(f"{path} is not a readable PyTorch weights file: {load_error_reason(err)}.") from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors.")
    return obj


def load_backbone_weights(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy every backbone tensor into ``net``; the classification head (``fc``) is ignored."""
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    own = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            details.append(f"{len(wrong)} of another shape (e.g. {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)})")
        raise WeightsError(
            f"The weights in {source} do not fit this architecture: {'; '.join(details)}. "
            "Check that model.arch matches the file (e.g. resnet18 weights for model.arch=resnet18)."
        )
    net.load_state_dict(state, strict=False)


def build_resnet(arch: str, init: str = "scratch", weights_path: str | None = None) -> nn.Module:
    """A torchvision ResNet whose ``fc`` is replaced by one logit (P(COVID) = sigmoid(logit))."""
    if arch not in ARCHS:
        raise ValueError(f"Unknown model.arch={arch!r}; choose one of {', '.join(ARCHS)}.")
    if init not in INITS:
        raise ValueError(f"Unknown init={init!r}; choose one of {', '.join(INITS)}.")
    if init in INIT_ARCH and arch != INIT_ARCH[init]:
        raise ValueError(f"init={init} provides {INIT_ARCH[init]} weights only; set model.arch={INIT_ARCH[init]} (got {arch}).")
    factory, weights = ARCHS[arch]
    net = factory(weights=None)
    if init == "ct":
        from covidnet.ct_weights import load_ct_state_dict  # imported here: ct_weights builds on this module

        load_backbone_weights(net, load_ct_state_dict(weights_path), "the CT encoder weights")
    if init == "imagenet":
        if weights_path:
            load_backbone_weights(net, read_state_dict(weights_path), str(weights_path))
        else:
            expected = imagenet_weights_file(arch)
            try:
                state = weights.get_state_dict(progress=True, check_hash=True, weights_only=True, map_location="cpu")
            except Exception as err:  # noqa: BLE001 - network and cache failures alike
                raise WeightsError(
                    f"Could not obtain the ImageNet weights for {arch} ({type(err).__name__}: {err}). "
                    f"torchvision expects the file {expected} (from {weights.url}). "
                    f"Copy it there, or pass model.weights_path=/path/to/{expected.name}."
                ) from err
            load_backbone_weights(net, state, str(expected))
    net.fc = nn.Linear(net.fc.in_features, 1)
    return net
