"""How a checkpoint scores an image set: each image decoded once per input spec through the one preprocessing
path (``covidnet.images.preprocess.prepare``), then predicted in the precision and memory format of the checkpoint's
training run, so evaluation reproduces the run's own test predictions. Used by covidnet.trained.evaluation, for evaluate.py and
training's ``eval_sets``."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from covidnet.images.covid_ct_layout import DatasetError
from covidnet.core.errors import EvalError
from covidnet.core.hardware import precision_plugin
from covidnet.models.predict import on_images, predict_batch
from covidnet.images.preprocess import InputSpec, prepare
from covidnet.rundirs.run_checkpoints import run_of
from covidnet.data.sets import EvalSet
from covidnet.images.sources.base import SourceError


@dataclass
class Decoded:
    """One set prepared for one input spec: the uint8 N x 1 x S x S the model's data module would cache, and the
    keys of the images whose lung field was not found (used whole, as in training; None: the spec needs none)."""

    images: torch.Tensor
    lung_fallbacks: list[str] | None


def decode(s: EvalSet, specs: set[InputSpec], progress: bool = True) -> dict[InputSpec, Decoded]:
    """Each image decoded once and prepared for every distinct input spec the models need, through
    :func:`covidnet.images.preprocess.prepare` (field, intensity, resize): the one path training, CAMs and visualize
    take, so a model sees an eval image as it saw its training images.

    Every image that fails is listed together, before any model runs."""
    specs = sorted(specs, key=lambda spec: tuple(spec.as_dict().values()))
    out: dict[InputSpec, list[torch.Tensor]] = {spec: [] for spec in specs}
    fallbacks: dict[InputSpec, list[str]] = {spec: [] for spec in specs}
    problems = []
    for r in tqdm(s.records, desc=f"{s.name}: reading", unit="img", disable=not progress, file=sys.stderr):
        try:
            grey = r.load()
        except (SourceError, DatasetError) as err:
            problems.append(str(err))
            continue
        for spec in specs:
            prepared = prepare(grey, spec)
            out[spec].append(prepared.image)
            if prepared.lungs_found is False:
                fallbacks[spec].append(r.key)
    if problems:
        raise EvalError(f"eval set {s.name}: {len(problems)} image(s) cannot be read, nothing was evaluated:\n  " + "\n  ".join(problems[:10]))
    return {spec: Decoded(torch.stack(out[spec]), fallbacks[spec] if spec.needs_lungs else None) for spec in specs}


def predict(model: torch.nn.Module, preprocess, images: torch.Tensor, batch_size: int, device, desc: str, progress: bool = True,
            precision=None) -> np.ndarray:
    """P(COVID) per image, in order, through covidnet.models.predict (eval mode, and images as input, restored afterwards), under
    ``precision`` (a Lightning precision plugin, :func:`covidnet.core.hardware.precision_plugin`; None: fp32)."""
    precision = precision or precision_plugin("32-true")
    probs = []
    with precision.forward_context(), on_images(model):
        for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress, file=sys.stderr):
            x = torch.stack([preprocess(img) for img in images[start : start + batch_size]])
            probs.append(predict_batch(model, precision.convert_input(x)).flatten())
    return torch.cat(probs).numpy()


RUN = "run"  # precision / channels_last: what the checkpoint's training run used


def scoring(checkpoint: Path, precision: str = RUN, channels_last: bool | str = RUN, device: str = "cpu") -> dict:
    """How a checkpoint's P(COVID) are computed, recorded in each metrics.json: the precision and memory format
    (``run``: those its training run recorded in metrics.json ``hardware``, so evaluation reproduces the run's own
    test predictions; 32-true and the default format for a checkpoint outside a run) and the device."""
    run = run_of(checkpoint)
    hardware = ((run.read_metrics() or {}).get("hardware") or {}) if run is not None else {}
    source = {}
    if precision == RUN:
        precision, source["precision"] = (hardware["precision"], "the run's metrics.json") if hardware.get("precision") else ("32-true", "default (no run record)")
    else:
        source["precision"] = "set (precision=)"
    if channels_last == RUN:
        channels_last, source["channels_last"] = ((bool(hardware["channels_last"]), "the run's metrics.json") if "channels_last" in hardware
                                                  else (False, "default (no run record)"))
    else:
        source["channels_last"] = "set (channels_last=)"
    precision_plugin(precision, device)  # an unusable precision fails here, before any image is read
    return {"precision": str(precision), "channels_last": bool(channels_last), "device": str(device), "from": source}


def set_scoring(m, how: dict) -> None:
    """Put a loaded model in the precision and memory format ``how`` (see :func:`scoring`) says."""
    m.scoring = how
    m.precision = precision_plugin(how["precision"], how["device"])
    m.model = m.precision.convert_module(m.model)
    if hasattr(m.model, "set_channels_last"):
        m.model.set_channels_last(how["channels_last"])
