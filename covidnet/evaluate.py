"""`evaluate(cfg)`: trained checkpoints on image sets beyond the training split (see docs/external.md).

Each model is rebuilt from its checkpoint alone and sees every image through the preprocessing stored
with it (the data-module hyperparameters in the checkpoint), the same code path as training and
visualize.py. Sets are read by :mod:`covidnet.sources` and everything is checked (checkpoints, sets, output
directories) before the first prediction; outputs go to a fresh directory and are never overwritten:

    <out_dir>/<model>/<set>/metrics.json     intervals per slice (patients resampled) and per patient
    <out_dir>/<model>/<set>/predictions.csv  key, patient, label, diagnosis, position, slice_label, prob_covid
    <out_dir>/summary.csv                    one row per model, set, level and comparison

With ``into_runs=true`` (checkpoints given as run or sweep directories) each run's results also go to
``<run dir>/eval/<set>/``, where ``python -m covidnet.report`` picks them up (training with ``eval_sets``
writes there directly).

``main`` is the command line of both ``python evaluate.py`` and ``covidnet-evaluate``:
``python evaluate.py ckpt=<sweep dir> eval=[covid_ct_md,semiseg]``, where ``eval=a,b`` also means a list of sets.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from covidnet import stats
from covidnet.atomic import atomic_path, write_json
from covidnet.checkpoint import CheckpointError
from covidnet.config_check import EVALUATE, check_config
from covidnet.configs import config_dir
from covidnet.entry import hydra_app
from covidnet.errors import UserError
from covidnet.processes import pid_alive
from covidnet.run_record import check_writable
from covidnet.dataset import DatasetError
from covidnet.multisource import MAIN_SOURCE, split_by_patient
from covidnet.predict import predict_batch
from covidnet.hardware import precision_plugin
from covidnet.preprocess import InputSpec, prepare
from covidnet.sources import read_source
from covidnet.sources.base import Record, SourceError

OUTPUT_FILES = ("metrics.json", "predictions.csv")
EVAL_AREA = "eval"  # <run dir>/eval/<set>/
CONF_DIR = config_dir()  # conf/ of a checkout, or covidnet/conf of an installed package (the eval sets: conf/eval/)
# preprocessing keys a user may state (evaluate.yaml `data:`); the checkpoint's values always win
STATED_PREPROCESSING = ("image_size", "normalization", "field", "intensity", "crop_margin")


def known_sets() -> list[str]:
    """Names of the sets in conf/eval/."""
    return sorted(p.stem for p in (CONF_DIR / "eval").glob("*.yaml"))


class EvalError(UserError, ValueError):
    """An evaluate.py setting or input cannot be honoured; the message says which and what to do."""


@dataclass
class EvalSet:
    name: str
    kind: str
    root: Path
    records: list[Record]
    notes: list[str]
    topk: int
    # the resolved set definition (kind, root, read options, patient_topk): what was evaluated, in metrics.json
    definition: dict = field(default_factory=dict)


# --- sets ---------------------------------------------------------------------------------------------------
def set_config(name: str, eval_data: str | None = None, overrides: dict | None = None) -> DictConfig:
    """``conf/eval/<name>.yaml`` on its own (for training's ``eval_sets``), with ``${eval_data}`` resolved."""
    path = CONF_DIR / "eval" / f"{name}.yaml"
    if not path.is_file():
        raise EvalError(f"Unknown eval set {name!r}: no {path}. Known sets: {', '.join(known_sets())}.")
    base = OmegaConf.create({"eval_data": eval_data if eval_data is not None else "${oc.env:COVIDNET_EVAL_DATA,data}"})
    merged = OmegaConf.merge(base, {"set": OmegaConf.load(path)}, {"set": overrides or {}})
    return OmegaConf.create(OmegaConf.to_container(merged, resolve=True)["set"])


def load_set(name: str, cfg: DictConfig | dict) -> EvalSet:
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    unset = sorted(k.removeprefix(f"eval.{name}.") for k in OmegaConf.missing_keys(cfg))  # keys below the set
    if unset:
        raise EvalError(f"eval set {name}: not set: {', '.join(unset)}. Pass " + " ".join(f"eval.{name}.{k}=..." for k in unset)
                        + f" (conf/eval/{name}.yaml says what each means).")
    for key in ("kind", "root"):
        if key not in cfg:
            raise EvalError(f"eval set {name}: no {key} in its config (conf/eval/{name}.yaml).")
    options = OmegaConf.to_container(cfg.read, resolve=True) if cfg.get("read") is not None else {}
    root = Path(str(cfg.root)).expanduser()
    try:
        records, notes = read_source(str(cfg.kind), root, **options)
    except SourceError as err:
        raise EvalError(f"eval set {name}: {err}") from err
    topk = int(cfg.get("patient_topk", 5))
    if topk < 1:
        raise EvalError(f"eval set {name}: patient_topk={topk} must be at least 1.")
    definition = {"kind": str(cfg.kind), "root": str(root.resolve()), "read": options, "patient_topk": topk}
    return EvalSet(name, str(cfg.kind), root.resolve(), records, notes, topk, definition)


def source_root(name: str, dm_hparams: dict) -> Path | None:
    """Where a training source of a checkpoint was read from (its inline definition or conf/eval/<name>.yaml under
    the run's ``sets_root``), resolved here; None where that cannot be told."""
    defs = (dm_hparams.get("source_defs") or {}).get(name)
    try:
        root = defs.get("root") if defs is not None else set_config(name, dm_hparams.get("sets_root")).root
    except (EvalError, AttributeError, ValueError):
        return None
    return Path(str(root)).expanduser().resolve() if root else None


def held_out(s: EvalSet, dm_hparams: dict) -> tuple[list[int], dict | None]:
    """Indices of the records of ``s`` the checkpoint was not trained on, and what was left out (None: nothing).

    A model trained with ``data.sources=[covid_ct, <set>]`` saw the patients of the other folds of that set
    (covidnet.multisource.split_by_patient): counting them as external would score it on its own training data.
    The set is recognised by its name or by the folder it is read from; its held-out fold is what is scored."""
    everything = list(range(len(s.records)))
    for name in dm_hparams.get("sources") or []:
        if name == MAIN_SOURCE or not (name == s.name or source_root(name, dm_hparams) == s.root):
            continue
        fold, n_folds = int(dm_hparams.get("fold", 0)), int(dm_hparams.get("n_folds", 2))
        try:
            parts = split_by_patient(s.records, fold, n_folds, f"eval set {s.name}")
        except SourceError as err:
            raise EvalError(f"eval set {s.name} is the training source {name!r} of this checkpoint, and its training patients "
                            f"cannot be told apart ({err}); evaluate on a set the model was not trained on.") from err
        test = {id(r) for r in parts["test"]}
        keep = [i for i, r in enumerate(s.records) if id(r) in test]
        trained = sorted({r.patient for r in parts["train"]})
        return keep, {"source": name, "fold": fold, "n_folds": n_folds, "patients": trained, "n_images": len(s.records) - len(keep)}
    return everything, None


@dataclass
class Decoded:
    """One set prepared for one input spec: the uint8 N x 1 x S x S the model's data module would cache, and the
    keys of the images whose lung field was not found (used whole, as in training; None: the spec needs none)."""

    images: torch.Tensor
    lung_fallbacks: list[str] | None


def decode(s: EvalSet, specs: set[InputSpec], progress: bool = True) -> dict[InputSpec, Decoded]:
    """Each image decoded once and prepared for every distinct input spec the models need, through
    :func:`covidnet.preprocess.prepare` (field, intensity, resize): the one path training, CAMs and visualize
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
    """P(COVID) per image, in order, through covidnet.predict (eval mode, restored afterwards), under
    ``precision`` (a Lightning precision plugin, :func:`covidnet.hardware.precision_plugin`; None: fp32)."""
    precision = precision or precision_plugin("32-true")
    probs = []
    with precision.forward_context():
        for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress, file=sys.stderr):
            x = torch.stack([preprocess(img) for img in images[start : start + batch_size]])
            probs.append(predict_batch(model, precision.convert_input(x)).flatten())
    return torch.cat(probs).numpy()


# --- metrics ---------------------------------------------------------------------------------------------------
def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def _interval(iv: stats.Interval) -> dict:
    return {"estimate": _num(iv.estimate), "low": _num(iv.low), "high": _num(iv.high), "n_boot": iv.n_boot, "n_undefined": iv.n_undefined}


def undefined_metrics(labels: np.ndarray) -> set[str]:
    """Metrics without meaning on this subset: with no non-COVID image, AUROC, specificity and precision; with no COVID image, AUROC, sensitivity, F1 and precision."""
    out = set()
    if not (labels == 0).any():
        out |= {"auroc", "specificity", "precision"}
    if not (labels == 1).any():
        out |= {"auroc", "sensitivity", "f1", "precision"}
    return out


def block(labels: np.ndarray, probs: np.ndarray, groups: list | None, n_boot: int, seed: int) -> dict:
    """Metrics with 95 % intervals on one subset; ``groups`` (patient per image) makes the bootstrap resample patients."""
    ivs = stats.bootstrap_metrics(labels, probs, n_boot, seed, groups=groups)
    skip = undefined_metrics(labels)
    return {
        "n": int(labels.size),
        "n_covid": int((labels == 1).sum()),
        "n_patients": len(set(groups)) if groups is not None else None,
        "resampled": "patients (stratified by label)" if groups is not None else "images",
        "metrics": {m: (None if m in skip else _interval(iv)) for m, iv in ivs.items()},
        "mean_prob_covid": _interval(stats.bootstrap_mean(probs, n_boot, seed, groups=groups)),
    }


def comparisons(records: list[Record]) -> dict[str, np.ndarray]:
    """Subsets: ``all``, and ``COVID vs <d>`` for each non-COVID diagnosis where there are several."""
    labels = np.asarray([r.label for r in records])
    subsets = {"all": np.arange(len(records))}
    negatives = sorted({r.diagnosis for r in records if r.label == 0})
    if (labels == 1).any() and len(negatives) > 1:
        for d in negatives:
            subsets[f"COVID vs {d}"] = np.flatnonzero([r.label == 1 or r.diagnosis == d for r in records])
    return subsets


def patient_scores(records: list[Record], probs: np.ndarray, topk: int) -> tuple[list[str], np.ndarray, dict[str, np.ndarray], list[str]]:
    """Per patient (in order of first appearance): id, label, {mean, top-k mean of P(COVID)}, diagnosis."""
    order: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        order.setdefault(r.patient, []).append(i)
    ids = list(order)
    labels = np.asarray([records[v[0]].label for v in order.values()])
    diagnosis = [records[v[0]].diagnosis for v in order.values()]
    mean = np.asarray([probs[v].mean() for v in order.values()])
    top = np.asarray([np.sort(probs[v])[::-1][: min(topk, len(v))].mean() for v in order.values()])
    return ids, labels, {"mean": mean, f"top{topk}_mean": top}, diagnosis


def set_metrics(s: EvalSet, probs: np.ndarray, n_boot: int, seed: int) -> dict:
    records = s.records
    labels = np.asarray([r.label for r in records])
    has_patients = all(r.patient is not None for r in records)
    groups = [r.patient for r in records] if has_patients else None
    for p in set(groups or []):
        if len({r.label for r in records if r.patient == p}) > 1:
            raise EvalError(f"eval set {s.name}: patient {p} has images of both labels; a patient has one label.")
    out: dict = {
        "set": s.name,
        "kind": s.kind,
        "root": str(s.root),
        "n_images": len(records),
        "n_covid": int(labels.sum()),
        "diagnoses": {d: sum(r.diagnosis == d for r in records) for d in sorted({r.diagnosis for r in records})},
        "n_patients": len(set(groups)) if groups else None,
        "threshold": stats.THRESHOLD,
        "notes": list(s.notes),
        "images": {},
    }
    for name, idx in comparisons(records).items():
        g = [groups[i] for i in idx] if groups else None
        out["images"][name] = block(labels[idx], probs[idx], g, n_boot, seed)
    if has_patients:
        ids, plabels, scores, pdiag = patient_scores(records, probs, s.topk)
        prec = [Record(key=i, path=Path(i), label=int(lab), diagnosis=d, patient=i) for i, lab, d in zip(ids, plabels, pdiag)]
        out["patients"] = {}
        for agg, values in scores.items():
            out["patients"][agg] = {}
            for name, idx in comparisons(prec).items():
                out["patients"][agg][name] = block(plabels[idx], values[idx], [ids[i] for i in idx], n_boot, seed)
        out["patient_probs"] = {i: {a: _num(v[k]) for a, v in scores.items()} | {"label": int(plabels[k]), "diagnosis": pdiag[k]} for k, i in enumerate(ids)}
    if any(r.slice_label is not None for r in records):
        # infected COVID slices vs every non-COVID slice; COVID slices without a finding (or a label) left out
        idx = np.flatnonzero([(r.label == 1 and r.slice_label == 1) or r.label == 0 for r in records])
        g = [groups[i] for i in idx] if groups else None
        out["infected_slices"] = block(labels[idx], probs[idx], g, n_boot, seed)
        out["infected_slices"]["what"] = "COVID slices with a published infection label vs all non-COVID slices"
    return out


def write_predictions(path: Path, records: list[Record], probs: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "patient", "label", "diagnosis", "position", "slice_label", "prob_covid"])
        for r, p in zip(records, probs):
            w.writerow([r.key, r.patient or "", r.label, r.diagnosis, "" if r.position is None else r.position,
                        "" if r.slice_label is None else r.slice_label, f"{p:.6f}"])


def read_predictions(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_fresh(dirs: list[Path]) -> None:
    """Refuse result files that exist, except the leftovers of a killed evaluation (see :func:`leftover`)."""
    clash = [str(d / f) for d in dirs if not leftover(d) for f in OUTPUT_FILES if (d / f).exists()]
    if clash:
        raise EvalError(f"{len(clash)} result file(s) already exist, e.g. {clash[:3]}; covidnet never overwrites results: "
                        "choose another out_dir (or leave it at its default), or pass into_runs=false.")


INCOMPLETE = "INCOMPLETE"  # <result dir>/INCOMPLETE: a process is writing it, or one was killed doing so


def _owner(mark: Path) -> int | None:
    try:
        return int(json.loads(mark.read_text()).get("pid"))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def leftover(d: Path) -> bool:
    """A result directory an evaluation was killed writing: its INCOMPLETE mark's process is gone and it has no
    metrics.json (written last), so what it holds is not a result and may be replaced."""
    mark = d / INCOMPLETE
    owner = _owner(mark) if mark.is_file() else None
    return owner is not None and owner != os.getpid() and not pid_alive(owner) and not (d / "metrics.json").exists()


def claim(dirs: list[Path], what: str) -> list[Path]:
    """Create each result directory's ``INCOMPLETE`` mark exclusively (``O_EXCL``) before any prediction, so two
    evaluations never write the same results: the second is refused, naming the first. A mark whose process has
    died (a killed evaluation) is taken over, with a note. Each mark is removed once its directory's files are
    written; one that stays says its directory is incomplete."""
    claimed: list[Path] = []
    try:
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
            mark = d / INCOMPLETE
            try:
                fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = _owner(mark)
                if owner is None or owner == os.getpid() or pid_alive(owner):
                    raise EvalError(f"{d} is being written by another evaluation (process {owner}; {mark}). Wait for it to finish or "
                                    f"choose another out_dir; if no evaluation is running there, remove {mark}.") from None
                print(f"note: {d}: taking over from evaluation process {owner}, which ended before finishing it")
                mark.unlink(missing_ok=True)
                fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                taken = True
            else:
                taken = False
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "what": what}, f)
            claimed.append(mark)
            if not taken:
                check_fresh([d])  # results that a finished evaluation wrote before this one claimed the directory
    except BaseException:
        for mark in claimed:
            mark.unlink(missing_ok=True)
        raise
    return claimed


def summary_rows(model: str, metrics: dict) -> list[dict]:
    rows = []
    levels = [("slices", "", metrics["images"])]
    levels += [(f"patients ({agg})", "", b) for agg, b in metrics.get("patients", {}).items()]
    if "infected_slices" in metrics:
        levels.append(("infected slices", "", {"all": metrics["infected_slices"]}))
    for level, _, blocks in levels:
        for subset, b in blocks.items():
            row = {"model": model, "set": metrics["set"], "level": level, "subset": subset, "n": b["n"], "n_covid": b["n_covid"]}
            for m in ("auroc", "acc", "sensitivity", "specificity", "f1"):
                iv = b["metrics"].get(m)
                row[m] = iv["estimate"] if iv else None
                row[f"{m}_low"], row[f"{m}_high"] = (iv["low"], iv["high"]) if iv else (None, None)
            row["mean_prob_covid"] = b["mean_prob_covid"]["estimate"]
            rows.append(row)
    return rows


# --- checkpoints ---------------------------------------------------------------------------------------------
def preprocessing_notes(name: str, spec: dict, stated: dict) -> list[str]:
    """A note for each ``data.<key>`` the user stated that differs from the checkpoint's input spec (which wins)."""
    notes = []
    for key, value in stated.items():
        if value is not None and key in spec and spec[key] != value:
            notes.append(f"{name}: trained with data.{key}={spec[key]}; data.{key}={value} is ignored "
                         "(the checkpoint's preprocessing wins)")
    return notes


def run_dir_of(checkpoint: Path) -> Path | None:
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
    return run if run is not None and (run / "metrics.json").is_file() else None


RUN = "run"  # precision / channels_last: what the checkpoint's training run used


def scoring(checkpoint: Path, precision: str = RUN, channels_last: bool | str = RUN, device: str = "cpu") -> dict:
    """How a checkpoint's P(COVID) are computed, recorded in each metrics.json: the precision and memory format
    (``run``: those its training run recorded in metrics.json ``hardware``, so evaluation reproduces the run's own
    test predictions; 32-true and the default format for a checkpoint outside a run) and the device."""
    run = run_dir_of(Path(checkpoint))
    hardware = (json.loads((run / "metrics.json").read_text()).get("hardware") or {}) if run is not None else {}
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


def evaluate_models(models, sets: list[EvalSet], out_dirs: dict[tuple[str, str], list[Path]], batch_size: int, device, n_boot: int,
                    seed: int, progress: bool = True) -> list[dict]:
    """Predict and write results for every (model, set); returns summary rows. ``out_dirs[(model, set)]``: where to write.

    Each set is decoded once per distinct input spec among the models (covidnet.preprocess.InputSpec, from each
    checkpoint), and each metrics.json records that whole spec, the images used whole for want of a lung field,
    and the precision the probabilities were computed in."""
    all_dirs = [d for dirs in out_dirs.values() for d in dirs]
    check_fresh(all_dirs)
    marks = claim(all_dirs, f"{len(models)} model(s) on {', '.join(s.name for s in sets)}")
    try:
        return _evaluate_models(models, sets, out_dirs, batch_size, device, n_boot, seed, progress)
    except BaseException:  # an error, not a kill: directories left unwritten are not marked as being written
        for mark in marks:
            if not (mark.parent / "metrics.json").exists():
                mark.unlink(missing_ok=True)
        raise


def _evaluate_models(models, sets, out_dirs, batch_size, device, n_boot, seed, progress) -> list[dict]:
    rows = []
    for s in sets:
        decoded = decode(s, {m.datamodule.spec for m in models}, progress)
        for m in models:
            spec = m.datamodule.spec
            keep, excluded = held_out(s, dict(m.datamodule.hparams))
            scored = s
            if excluded is not None:
                note = (f"{m.name} was trained on {len(excluded['patients'])} patient(s) of {s.name} (data.sources, data.fold="
                        f"{excluded['fold']} of {excluded['n_folds']}): their {excluded['n_images']} images are left out, "
                        f"{len(keep)} images of its held-out patients are scored")
                print(f"note: {note}")
                scored = replace(s, records=[s.records[i] for i in keep], notes=[*s.notes, note])
            probs = predict(m.model, m.datamodule.preprocess, decoded[spec].images[keep], batch_size, device, f"{s.name}: {m.name}", progress,
                            getattr(m, "precision", None))
            metrics = set_metrics(scored, probs, n_boot, seed)
            metrics["set_definition"] = s.definition
            metrics["training_patients_excluded"] = excluded
            metrics["model"] = m.name
            metrics["checkpoint"] = str(m.path)
            metrics["input_spec"] = spec.as_dict()
            fallbacks = decoded[spec].lung_fallbacks
            if fallbacks is not None and excluded is not None:
                fallbacks = [k for k in fallbacks if k in {r.key for r in scored.records}]
            metrics["lung_fallbacks"] = None if fallbacks is None else {"n": len(fallbacks), "files": fallbacks}
            metrics["precision"] = getattr(m, "scoring", None) or {"precision": "32-true", "channels_last": False, "device": str(device), "from": {}}
            metrics["notes"] += getattr(m, "notes", [])
            for d in out_dirs[(m.name, s.name)]:
                d.mkdir(parents=True, exist_ok=True)
                write_predictions(d / "predictions.csv", scored.records, probs)
                write_json(d / "metrics.json", metrics)  # last: a directory with metrics.json is complete
                (d / INCOMPLETE).unlink(missing_ok=True)
            rows += summary_rows(m.name, metrics)
    return rows


def set_names(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def evaluate(cfg: DictConfig) -> dict:
    """Every checkpoint of ``cfg.ckpt`` on every set of ``cfg.eval``; everything is checked before work starts."""
    from covidnet.visualize import load_models

    check_config(cfg, EVALUATE)  # every option, before any checkpoint or image is read
    sets_cfg = cfg.get("eval") or {}
    if not sets_cfg:
        raise EvalError("No set to evaluate on: pass eval=[covid_ct_md,semiseg] (names of conf/eval/*.yaml).")
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto" else cfg.device)
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise EvalError(f"device={device}, but torch finds no CUDA GPU here (torch.cuda.is_available() is false); pass device=cpu or device=auto.")
    out = Path(cfg.out_dir).expanduser()
    try:
        check_writable(out, "output directory", "Pass another out_dir=... or fix its permissions.")
    except UserError as err:
        raise EvalError(str(err)) from err
    from covidnet.visualize import resolve_checkpoints

    try:
        chosen, _ = resolve_checkpoints(cfg.ckpt, tool="evaluate", hint="evaluate.py scores trained runs' best checkpoints; to score "
                                        "an unfinished run anyway, pass its checkpoint file: ckpt=['<run dir>/checkpoints/last.ckpt'].")
        models = load_models(chosen, "unused", device)
    except CheckpointError:
        raise
    except ValueError as err:
        raise EvalError(str(err)) from err
    stated = {k: cfg.get("data", {}).get(k) for k in STATED_PREPROCESSING}
    for m in models:
        m.notes = preprocessing_notes(m.name, m.datamodule.spec.as_dict(), stated)
        set_scoring(m, scoring(m.path, cfg.get("precision", RUN), cfg.get("channels_last", RUN), device))
    sets = [load_set(name, sets_cfg[name]) for name in sets_cfg]
    out_dirs = {(m.name, s.name): [out / m.name / s.name] for m in models for s in sets}
    if cfg.get("into_runs"):
        for m in models:
            run = run_dir_of(m.path)
            if run is None:
                raise EvalError(f"into_runs=true: {m.path} is not in a training run directory (<run>/checkpoints/ with metrics.json).")
            from covidnet.visualize import best_checkpoint

            if best_checkpoint(run).resolve() != m.path.resolve():
                raise EvalError(f"into_runs=true: {m.path} is not {run}'s best checkpoint; the run's eval area holds its best checkpoint's results only.")
            for s in sets:
                out_dirs[(m.name, s.name)].append(run / EVAL_AREA / s.name)
    for s in sets:
        for note in s.notes:
            print(f"note: {note}")
    for m in models:
        for note in m.notes:
            print(f"note: {note}")
    check_fresh([d for dirs in out_dirs.values() for d in dirs])  # before anything is created
    out.mkdir(parents=True, exist_ok=True)
    # this call's mark on the whole: it stays (with the pairs written so far) if the evaluation is killed or fails
    mark = out / f"{INCOMPLETE}.{os.getpid()}.json"
    planned = [f"{m}/{s}" for m, s in out_dirs]
    write_json(mark, {"pid": os.getpid(), "pairs": planned, "note": "an evaluate.py call that has not finished (or was killed): "
                      "its pairs without metrics.json are missing, and summary.csv lacks its rows"})
    rows = evaluate_models(models, sets, out_dirs, int(cfg.batch_size), device, int(cfg.n_boot), int(cfg.seed), bool(cfg.get("progress", True)))
    add_summary(out / "summary.csv", rows)
    mark.unlink(missing_ok=True)
    for stale in out.glob(f"{INCOMPLETE}.*.json"):  # a killed call's mark, once every pair it meant is written
        owner = _owner(stale)
        pairs = json.loads(stale.read_text()).get("pairs", []) if owner is not None and not pid_alive(owner) else None
        if pairs is not None and all((out / p / "metrics.json").is_file() for p in pairs):
            stale.unlink(missing_ok=True)
    print_summary(rows)
    print(f"results: {out}")
    return {"out_dir": str(out), "rows": rows}


def add_summary(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` to summary.csv: the rows of earlier evaluations into the same out_dir are kept. Under an
    exclusive lock, so evaluations finishing at the same time both land."""
    import fcntl

    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = read_predictions(path) if path.is_file() else []
        fields = list(dict.fromkeys([*(before[0] if before else {}), *rows[0]]))
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows([*before, *rows])


def load_sets_for_training(names, eval_data: str | None) -> list[EvalSet]:
    """Training's ``eval_sets``: each named set read and checked before training starts (a bad set costs no training)."""
    names = set_names(names)
    if len(set(names)) != len(names):
        raise EvalError(f"eval_sets={names} names a set twice.")
    sets = [load_set(n, set_config(n, eval_data)) for n in names]
    for s in sets:
        decode(s, set(), progress=False)  # every image decoded once now: an unreadable one fails before hours of training
    return sets


def evaluate_run(best_checkpoint: str | Path, sets: list[EvalSet], run_dir: Path, batch_size: int = 32,
                 n_boot: int = stats.DEFAULT_BOOT, precision: str = "32-true", channels_last: bool = False, device: str = "cpu") -> list[dict]:
    """One run's best checkpoint on each set, into ``<run dir>/eval/<set>/`` (what training's ``eval_sets`` does).
    Training passes the run's precision, memory format and device, so an eval set's P(COVID) are computed as the
    run's own ``predictions_test.csv`` are (and evaluate.py, reading them from the run's metrics.json, agrees)."""
    from covidnet.visualize import load_models

    models = load_models([str(best_checkpoint)], "unused", device)
    for m in models:
        m.notes = []
        how = scoring(m.path, precision, channels_last, device)
        how["from"] = {"precision": "the training run", "channels_last": "the training run"}
        set_scoring(m, how)
    out_dirs = {(m.name, s.name): [Path(run_dir) / EVAL_AREA / s.name] for m in models for s in sets}
    return evaluate_models(models, sets, out_dirs, batch_size, device, n_boot, stats.DEFAULT_SEED, progress=False)


def print_summary(rows: list[dict]) -> None:
    def fmt(row, m):
        return "-" if row[m] is None else f"{row[m]:.3f} [{row[m + '_low']:.2f}, {row[m + '_high']:.2f}]"

    print(f"{'model':28} {'set':14} {'level':20} {'subset':18} {'n':>4}  {'AUROC':22} {'sensitivity':22} {'specificity':22} meanP")
    for r in rows:
        print(f"{r['model'][:28]:28} {r['set'][:14]:14} {r['level'][:20]:20} {r['subset'][:18]:18} {r['n']:>4}  {fmt(r, 'auroc'):22} "
              f"{fmt(r, 'sensitivity'):22} {fmt(r, 'specificity'):22} {r['mean_prob_covid']:.3f}")


def list_overrides(argv: list[str]) -> list[str]:
    """``eval=a,b`` -> ``eval=[a,b]``: a list of sets, not a sweep (Hydra would ask for --multirun)."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    return [f"eval=[{a[5:]}]" if not multirun and re.fullmatch(r"eval=[\w,]+,[\w]+", a) else a for a in argv]


@hydra_app("evaluate")
def _main(cfg: DictConfig) -> None:
    evaluate(cfg)


def main(cfg: DictConfig | None = None) -> None:
    """``evaluate.py`` / ``covidnet-evaluate``: the command line with ``eval=a,b`` read as a list of sets, then
    Hydra; ``main(cfg)`` evaluates a composed config (no command line), like the other apps' ``main``."""
    if cfg is not None:
        return _main(cfg)
    sys.argv = list_overrides(sys.argv)
    _main()
