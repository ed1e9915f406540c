"""Building an architecture (covidnet/models/archs.py) with one output logit, initialised as the init registry says, and the
config rules on ``model.arch`` and ``model.freeze``."""

from __future__ import annotations

from torch import nn

from covidnet.models.archs import ARCHS, get_arch
from covidnet.models.inits import get_init
from covidnet.core.options import Across, Rule, one_of
from covidnet.models.weights_io import load_backbone_weights

FREEZE_MODES = ("none", "backbone", "up_to_layer4")  # every mode of any arch (each arch says which it has)


def _freeze_of_arch(values: dict) -> list[str]:
    """``model.freeze`` among the modes of ``model.arch`` (EfficientNet-Lite has no ``up_to_layer4``): refused by
    the config check, not only when the model is built."""
    arch, freeze = ARCHS[values["model.arch"]], values["model.freeze"]
    if freeze in arch.freeze_modes:
        return []
    return [f"model.freeze={freeze}: must be one of {', '.join(arch.freeze_modes)} for model.arch={arch.name} (the modes it defines)"]


# conf/model keys of the architecture (covidnet.core.options); the model and get_arch check with these. The choices are
# read when checked: an architecture registered later is a choice too.
OPTIONS: dict[str, Rule | Across] = {
    "model.arch": one_of(lambda: sorted(ARCHS)),
    "model.freeze": one_of(FREEZE_MODES),
    "model.arch+model.freeze": Across(("model.arch", "model.freeze"), _freeze_of_arch),
}


def build_backbone(arch: str, init: str = "scratch", weights_path: str | None = None) -> nn.Module:
    """The network of ``arch`` with its classifier replaced by one logit (P(COVID) = sigmoid(logit)), its other
    weights as ``init`` says (random, or every backbone tensor loaded and checked)."""
    spec = get_arch(arch)
    init_spec = get_init(init)
    init_spec.check_arch(arch)
    net = spec.build()
    loaded = init_spec.load(arch, weights_path)
    if loaded is not None:
        state, source = loaded
        load_backbone_weights(net, state, source, head=spec.head)
    old = getattr(net, spec.head)
    setattr(net, spec.head, nn.Linear(old.in_features, 1))
    return net
