"""The one checkpoint check, and rebuilding a trained classifier (and its preprocessing) from a checkpoint alone.

Every entry point that takes a checkpoint goes through ``read_checkpoint``: ``train.py ckpt_path=`` (resume),
``visualize.py ckpt=``, evaluation and the sweep report's CAM step (all three through ``load_models``). So a
missing, truncated, foreign or code-carrying file gets the same message everywhere, and no message passes on
PyTorch's advice to load with ``weights_only=False``.

Which checkpoint of a run is loaded is decided in covidnet.rundirs.run_checkpoints; this module only loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from covidnet.data.datamodule import CovidCTDataModule
from covidnet.core.errors import UserError
from covidnet.models.model import CovidClassifier
from covidnet.images.preprocess import InputSpec
from covidnet.rundirs.run_checkpoints import Chosen, resolve_checkpoints
from covidnet.core.options import Rule
from covidnet.models.weights_io import WeightsError, load_error_reason, mismatch_summary


# ``ckpt`` of visualize.py and evaluate.py (covidnet.core.options)
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
    except WeightsError as err:  # a sound checkpoint whose architecture needs an optional extra (timm): name the install
        raise CheckpointError(f"{path} was trained with model.arch={hparams.get('arch')}, which this install cannot build: {err}") from err
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its hyperparameters do not describe a covidnet model ({err}).") from err
    check_weights_fit(path, model, ckpt["state_dict"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.eval()
    return model, dict(ckpt.get("datamodule_hyper_parameters") or {})


def _no_preprocessing(path: str | Path, dm_hparams: dict) -> None:
    if not dm_hparams:
        raise CheckpointError(f"{path} holds no data-module hyperparameters, so the preprocessing it was trained with is unknown; use a checkpoint written by train.py.")


def _check_input_spec(path: str | Path, model: CovidClassifier, spec: InputSpec) -> InputSpec:
    """``spec`` (the data module's preprocessing), once it agrees with the ``input_spec`` the model stores: a
    checkpoint that does not say what its input was is refused."""
    stored = model.hparams.get("input_spec")
    if stored is not None and InputSpec.from_dict(stored) != spec:
        raise CheckpointError(f"{path}: the model's input_spec {dict(stored)} is not its data module's {spec.as_dict()}; "
                              "the checkpoint does not say what its input was. Use a checkpoint written by train.py.")
    return spec


def load_model(path: str | Path, map_location: str | torch.device = "cpu", option: str = "ckpt") -> tuple[CovidClassifier, InputSpec]:
    """``(model in eval mode, the input it was trained on)``: a checkpoint ready to predict on prepared images
    (covidnet.images.preprocess.prepare with that spec)."""
    model, dm_hparams = load_checkpoint(path, map_location, option)
    _no_preprocessing(path, dm_hparams)
    try:
        spec = InputSpec.from_dict(dm_hparams)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its data-module hyperparameters do not rebuild the preprocessing ({err}).") from err
    return model, _check_input_spec(path, model, spec)


# --- models of entry points (visualize.py, evaluate.py, training's eval_sets) ------------------------------------
@dataclass
class LoadedModel:
    name: str
    path: Path
    model: torch.nn.Module
    datamodule: CovidCTDataModule  # not set up: used for its preprocessing (and training sources) only
    chosen: Chosen


def model_name(choice: Chosen, hparams: dict) -> str:
    """The job's name from its Hydra record (e.g. ``init=scratch``), else ``<init>-<arch>``; an unfinished
    run's label is appended in brackets."""
    job = choice.run.job_name() if choice.run is not None else ""
    name = job or f"{hparams.get('init')}-{hparams.get('arch')}"
    return f"{name} [{choice.label}]" if choice.label else name


def load_models(chosen, data_root: str, device: str) -> list[LoadedModel]:
    """Rebuild each checkpoint's model and preprocessing, named (:func:`model_name`, made unique); ``chosen`` is
    covidnet.rundirs.run_checkpoints.resolve_checkpoints' list, or ``ckpt=`` entries (files, run or sweep directories)
    that are resolved here."""
    if not (isinstance(chosen, list) and all(isinstance(c, Chosen) for c in chosen)):
        chosen, _ = resolve_checkpoints(chosen)
    models: list[LoadedModel] = []
    for choice in chosen:
        path = choice.path
        model, dm_hparams = load_checkpoint(path, map_location=device)
        _no_preprocessing(path, dm_hparams)
        try:
            dm = CovidCTDataModule(**{**dm_hparams, "root": data_root})
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: its data-module hyperparameters do not rebuild the preprocessing ({err}).") from err
        _check_input_spec(path, model, dm.spec)
        name = model_name(choice, dict(model.hparams))
        taken = {m.name for m in models}
        if name in taken:
            name = next(f"{name} ({i})" for i in range(2, len(taken) + 3) if f"{name} ({i})" not in taken)
        models.append(LoadedModel(name, path, model.to(device).eval(), dm, choice))
    return models
