"""The one checkpoint check, and rebuilding a trained classifier (and its preprocessing) from a checkpoint alone.

Every entry point that takes a checkpoint goes through ``read_checkpoint``: ``train.py ckpt_path=`` (resume),
``visualize.py ckpt=``, evaluation and the sweep report's CAM step (both through ``load_checkpoint``). So a
missing, truncated, foreign or code-carrying file gets the same message everywhere, and no message passes on
PyTorch's advice to load with ``weights_only=False``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from covidnet.errors import UserError
from covidnet.model import CovidClassifier
from covidnet.options import Rule
from covidnet.weights_io import load_error_reason, mismatch_summary


# ``ckpt`` of visualize.py and evaluate.py (covidnet.options)
OPTIONS: dict[str, Rule] = {
    "ckpt": Rule("a .ckpt file, a run or sweep directory, or a list of these",
                 lambda v: (isinstance(v, str) and v.strip() != "") or (isinstance(v, list) and bool(v) and all(isinstance(i, str) for i in v))),
}


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, unreadable or not one of ours; the message says which and what to do."""


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", option: str = "ckpt") -> dict:
    """The checkpoint's contents, once it is known to be a readable covidnet checkpoint.

    Loading uses ``weights_only=True``: tensors and plain values are read, no code from the file runs.
    ``option`` is the key the user passes the path with (``ckpt``, ``ckpt_path``), named in the messages.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"Checkpoint not found: {path}. Pass {option}=<run dir>/checkpoints/<file>.ckpt (see metrics.json of a run).")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, pickle with code, not a torch file
        raise CheckpointError(f"{path} is not a readable checkpoint: {load_error_reason(err)}.") from err
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "arch" not in hparams or "init" not in hparams or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a covidnet checkpoint (no covidnet hyperparameters in it); train one with train.py.")
    return ckpt


def check_weights_fit(path: str | Path, model: torch.nn.Module, state: dict) -> None:
    """Refuse a checkpoint whose tensors do not fit ``model``, with counts and a few names (not PyTorch's full list)."""
    problem = mismatch_summary(model.state_dict(), state)
    if problem:
        arch = dict(getattr(model, "hparams", {})).get("arch")
        raise CheckpointError(f"{path}: its weights do not fit the model its hyperparameters describe (arch={arch}): {problem}.")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", option: str = "ckpt") -> tuple[CovidClassifier, dict]:
    """Return ``(model in eval mode, data-module hyperparameters)``: the one way to rebuild a trained model.

    The model is built from the checkpoint's hyperparameters without fetching pretrained weights (the
    checkpoint's replace them), so an ``init=imagenet`` model loads on a machine without the ImageNet file.
    """
    ckpt = read_checkpoint(path, map_location, option)
    hparams = ckpt["hyper_parameters"]
    try:
        model = CovidClassifier(**hparams, load_pretrained=False)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its hyperparameters do not describe a covidnet model ({err}).") from err
    check_weights_fit(path, model, ckpt["state_dict"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.eval()
    return model, dict(ckpt.get("datamodule_hyper_parameters") or {})
