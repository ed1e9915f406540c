"""Rebuild a trained classifier, and the preprocessing it was trained with, from its checkpoint alone."""

from __future__ import annotations

from pathlib import Path

import torch

from covidnet.errors import UserError
from covidnet.model import CovidClassifier
from covidnet.weights_io import load_error_reason


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, unreadable or not one of ours; the message says which and what to do."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[CovidClassifier, dict]:
    """Return ``(model in eval mode, data-module hyperparameters)``.

    Loading uses ``weights_only=True``: tensors and plain values are read, no code from the file runs.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"Checkpoint not found: {path}. Pass ckpt=<run dir>/checkpoints/<file>.ckpt (see metrics.json of a run).")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, pickle with code, not a torch file
        raise CheckpointError(f"{path} is not a readable checkpoint: {load_error_reason(err)}.") from err
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "arch" not in hparams or "init" not in hparams or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a covidnet checkpoint (no covidnet hyperparameters in it); train one with train.py.")
    try:
        model = CovidClassifier(**hparams, load_pretrained=False)
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (RuntimeError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: its weights do not fit the model its hyperparameters describe (arch={hparams.get('arch')}): {str(err)[:300]}"
        ) from err
    model.eval()
    return model, dict(ckpt.get("datamodule_hyper_parameters") or {})
