"""Reading weight files safely: the bottom of the weights stack (of covidnet it imports only covidnet.core.errors).

Everything that reads tensors from a file (ImageNet and CT weights, checkpoints) words its errors here, so
backbones, the init registry and the CT weights can all build on this module without importing each other.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from covidnet.core.errors import UserError


class WeightsError(UserError, ValueError):
    """Pretrained weights are missing or do not fit the architecture; the message says how to fix it."""


def load_error_reason(err: Exception) -> str:
    """One actionable line for an exception of ``torch.load(..., weights_only=True)``.

    PyTorch's own text is long and advises re-running with ``weights_only=False``, which would run code from
    the file: that advice is never passed on, only the reason the restricted loader gave.
    """
    text = str(err)
    # each way the restricted unpickler refuses a pickled object: an import (blocked module or not allowed) or a call
    unsafe = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+?)[.]?(?:\s|$)", text) or re.search(
        r"(?:call reduce for unrecognized function|create new object .*? but got|build .*?, but got) (.+?)\s*$", text, re.M)
    if unsafe:
        return (
            f"it holds pickled Python objects ({unsafe.group(1)}), which could run code when loaded; covidnet reads only "
            "tensors and plain values (weights_only=True) and does not load it. Use a file written by covidnet's "
            "train.py or by torch.save(model.state_dict())"
        )
    inner = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:Check the documentation|$)", text, re.S)
    if inner:
        text = inner.group(1)
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return f"{type(err).__name__}: {lines[0][:200] if lines else 'unreadable'}; it may be truncated or corrupt"


def mismatch_summary(own: dict, state: dict, limit: int = 3) -> str | None:
    """``None`` when ``state`` fits the tensors ``own`` (names and shapes), else counts and the first few names.

    A checkpoint of another architecture differs in hundreds of tensors: PyTorch's strict-load message lists
    every one (12 KB for a ResNet-18 vs ResNet-50); this says how many and shows ``limit`` of each kind.
    """
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if not (missing or unexpected or wrong):
        return None
    details = []
    if missing:
        details.append(f"{len(missing)} missing (e.g. {', '.join(missing[:limit])})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:limit])})")
    if wrong:
        shown = ", ".join(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:limit])
        details.append(f"{len(wrong)} of another shape (e.g. {shown})")
    return f"{len(own)} tensors expected, {len(state)} in the file: " + "; ".join(details)


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


def load_backbone_weights(net: nn.Module, state: dict[str, torch.Tensor], source: str, head: str = "fc") -> None:
    """Copy every backbone tensor into ``net``; the classification head (module ``head``) is ignored."""
    prefix = f"{head}."
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith(prefix)}
    own = {k: v for k, v in net.state_dict().items() if not k.startswith(prefix)}
    problem = mismatch_summary(own, state)
    if problem:
        raise WeightsError(
            f"The weights in {source} do not fit this architecture: {problem}. "
            "Check that model.arch matches the file (e.g. resnet18 weights for model.arch=resnet18)."
        )
    net.load_state_dict(state, strict=False)


def tensors_sha256(tensors: Mapping[str, torch.Tensor] | Iterable[torch.Tensor], extra: str = "") -> str:
    """SHA-256 of dtypes, shapes and bytes (and names, in sorted order, for a mapping), after ``extra``.

    Detects a damaged exported weights file (covidnet/models/ct_weights.py) and keys cached frozen features by the
    weights and inputs they came from (callbacks/frozen_features.py). An iterable is read once, lazily.
    """
    h = hashlib.sha256(extra.encode())
    items = ((f"{k}|", tensors[k]) for k in sorted(tensors)) if isinstance(tensors, Mapping) else (("", t) for t in tensors)
    for name, t in items:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
