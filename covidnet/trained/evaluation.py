"""Evaluation as a library: a model in memory, with its input spec, scored on image sets, results written once.

The apps call it, none another: evaluate.py with models rebuilt from checkpoints (covidnet.trained.checkpoint.load_models),
training's ``eval_sets`` with the model it has just trained (its best weights, its data module), so a run is not
reloaded from disk to be scored. Each set is decoded once per input spec through the one path from file to network
input that training takes (covidnet.trained.set_scoring.decode -> covidnet.images.preprocess.prepare), and each result is written
by covidnet.rundirs.run_files.write_eval: ``<dir>/predictions.csv`` and ``<dir>/metrics.json`` (covidnet.metrics.set_metrics).
Several models can also be scored as one (:class:`Ensemble`: the mean of their P(COVID), covidnet.metrics.ensembles).
Directories are claimed before any prediction and never overwritten (covidnet.rundirs.eval_lock).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from filelock import FileLock
from torch import nn

from covidnet.metrics import stats
from covidnet.core.atomic import atomic_path
from covidnet.trained.checkpoint import LoadedModel, model_name
from covidnet.metrics.ensembles import MIN_MEMBERS, ensemble_name, mean_probs
from covidnet.core.errors import EvalError
from covidnet.rundirs.eval_lock import INCOMPLETE, check_fresh, claim, release, same_result
from covidnet.rundirs.run_checkpoints import resolve_checkpoints
from covidnet.rundirs.run_files import METRICS_FILE, copy_eval, read_eval, read_metrics, write_eval
from covidnet.rundirs.runs import RunDir
from covidnet.metrics.set_metrics import set_metrics, summary_rows
from covidnet.trained.set_scoring import decode, predict, scoring, set_scoring
from covidnet.data.sets import EvalSet, held_out, load_set, set_config, set_names


@dataclass
class EvalModel:
    """A model to score as it is in memory: its name in the results, the checkpoint its weights are (metrics.json's
    ``checkpoint``, what a kept result is matched by), the network, and a data module for its input spec, its
    preprocessing and the sources it was trained on (it need not be set up). ``scoring``/``precision``: how its
    P(COVID) are computed (covidnet.trained.set_scoring.set_scoring)."""

    name: str
    path: Path
    model: nn.Module
    datamodule: Any
    notes: list[str] = field(default_factory=list)
    scoring: dict | None = None
    precision: Any = None

    @classmethod
    def of(cls, loaded: LoadedModel) -> EvalModel:
        return cls(loaded.name, loaded.path, loaded.model, loaded.datamodule)

    def input(self) -> dict:
        """What the network sees of an image: the input spec, and whether it averages each image with its mirror."""
        return {**self.datamodule.spec.as_dict(), "tta_flip": bool(dict(getattr(self.model, "hparams", {})).get("tta_flip"))}


@dataclass
class Ensemble:
    """Members scored as one model: on each set, the mean of their P(COVID) per image (covidnet.metrics.ensembles)."""

    members: list[EvalModel]
    device: str

    @property
    def name(self) -> str:
        return ensemble_name(len(self.members))

    @property
    def path(self) -> str:  # metrics.json's ``checkpoint``: what a kept result is matched by
        return " + ".join(str(m.path) for m in self.members)

    @property
    def scoring(self) -> dict:
        how = [scoring_of(m, self.device) for m in self.members]

        def one(key):
            values = sorted({str(h[key]) for h in how})
            return how[0][key] if len(values) == 1 else "/".join(values)
        return {"precision": one("precision"), "channels_last": one("channels_last"), "device": str(self.device),
                "from": {"members": {m.name: h for m, h in zip(self.members, how)}}}


def check_ensemble(models: list[EvalModel]) -> None:
    """Refuse members that do not see images alike (input spec, tta_flip): their mean would average two different
    inputs. The message names the first differing checkpoint and key."""
    if len(models) < MIN_MEMBERS:
        raise EvalError(f"ensemble=true needs at least {MIN_MEMBERS} checkpoints, got {len(models)}: pass ckpt=[a.ckpt,b.ckpt] or a sweep directory.")
    first = models[0].input()
    for m in models[1:]:
        for key, value in m.input().items():
            if value != first[key]:
                raise EvalError(f"ensemble=true: {m.path} was trained with {key}={value}, {models[0].path} with {key}={first[key]}; "
                                "members of an ensemble must share the input (image_size, normalization, field, intensity, crop_margin, "
                                "tta_flip). Leave that checkpoint out, or evaluate without ensemble=true.")


def scoring_of(m, device) -> dict:
    """How a model's probabilities are computed (covidnet.trained.set_scoring): the run's precision and memory format, or fp32."""
    return getattr(m, "scoring", None) or {"precision": "32-true", "channels_last": False, "device": str(device), "from": {}}


def evaluate_models(models: list[EvalModel], sets: list[EvalSet], out_dirs: dict[tuple[str, str], list[Path]], batch_size: int, device,
                    n_boot: int, seed: int, progress: bool = True, kept: dict[tuple[str, str], Path] | None = None,
                    ensemble: Ensemble | None = None) -> list[dict]:
    """Predict and write results for every (model, set); returns summary rows. ``out_dirs[(model, set)]``: where to write.

    Each set is decoded once per distinct input spec among the models (covidnet.images.preprocess.InputSpec), and each
    metrics.json records that whole spec, the images used whole for want of a lung field, and the precision the
    probabilities were computed in. ``kept[(model, set)]``: a complete result of the same evaluation
    (:func:`kept_results`); a pair with no directory left to write gives its summary rows from it. ``ensemble``:
    its members' mean on each set too, under ``out_dirs[(ensemble.name, set)]``."""
    all_dirs = [d for dirs in out_dirs.values() for d in dirs]
    check_fresh(all_dirs)
    marks = claim(all_dirs, f"{len(models)} model(s) on {', '.join(s.name for s in sets)}")
    try:
        return _evaluate_models(models, sets, out_dirs, batch_size, device, n_boot, seed, progress, kept or {}, ensemble)
    except BaseException:  # an error, not a kill: directories left unwritten are not marked as being written
        for mark in marks:
            release(mark)  # a written directory's mark is gone already
        raise


def _keep(done: Path, dirs: list[Path]) -> dict:
    """A complete result of the same evaluation copied where it is missing, not redone; its metrics."""
    for d in dirs:
        copy_eval(done, d)
        release(d / INCOMPLETE)
    return read_metrics(done / METRICS_FILE)


def _evaluate_models(models, sets, out_dirs, batch_size, device, n_boot, seed, progress, kept, ensemble) -> list[dict]:
    rows = []
    for s in sets:
        for m in models:
            done = kept.get((m.name, s.name))
            if done is not None:
                rows += summary_rows(m.name, _keep(done, out_dirs[(m.name, s.name)]))
        todo = [m for m in models if (m.name, s.name) not in kept]
        decoded = decode(s, {m.datamodule.spec for m in todo}, progress) if todo else {}
        for m in todo:
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
            metrics = set_metrics(scored.records, probs, n_boot, seed, name=s.name, kind=s.kind, root=s.root, notes=scored.notes, topk=s.topk)
            metrics["set_definition"] = s.definition
            metrics["training_patients_excluded"] = excluded
            metrics["model"] = m.name
            metrics["checkpoint"] = str(m.path)
            metrics["input_spec"] = spec.as_dict()
            fallbacks = decoded[spec].lung_fallbacks
            if fallbacks is not None and excluded is not None:
                fallbacks = [k for k in fallbacks if k in {r.key for r in scored.records}]
            metrics["lung_fallbacks"] = None if fallbacks is None else {"n": len(fallbacks), "files": fallbacks}
            metrics["precision"] = scoring_of(m, device)
            metrics["bootstrap"] = {"n_boot": n_boot, "seed": seed}
            metrics["notes"] += getattr(m, "notes", [])
            for d in out_dirs[(m.name, s.name)]:
                write_eval(d, scored.records, probs, metrics)
                release(d / INCOMPLETE)
            rows += summary_rows(m.name, metrics)
        if ensemble is not None:
            pair = (ensemble.name, s.name)
            written = {m.name: kept.get((m.name, s.name)) or out_dirs[(m.name, s.name)][0] for m in ensemble.members}
            metrics = _keep(kept[pair], out_dirs[pair]) if pair in kept else score_ensemble(ensemble, s, written, out_dirs[pair], n_boot, seed)
            rows += summary_rows(ensemble.name, metrics)
    return rows


def score_ensemble(ensemble: Ensemble, s: EvalSet, written: dict[str, Path], dirs: list[Path], n_boot: int, seed: int) -> dict:
    """The members' mean P(COVID) on ``s``, from the predictions.csv each member's result holds (``written``), on the
    images every member scored; written to ``dirs`` like a single model's result, its metrics returned."""
    results = {name: read_eval(d) for name, d in written.items()}
    keys, probs = mean_probs([{r["path"]: r["prob_covid"] for r in rows} for _, rows in results.values()])
    order = {k: i for i, k in enumerate(keys)}
    records = [r for r in s.records if r.key in order]  # the set's order, as its members' files
    probs = probs[[order[r.key] for r in records]]
    first = next(iter(results.values()))[0]
    note = f"{ensemble.name}: the mean P(COVID) of {', '.join(m.name for m in ensemble.members)} on the {len(records)} images all of them scored"
    metrics = set_metrics(records, probs, n_boot, seed, name=s.name, kind=s.kind, root=s.root, notes=[*s.notes, note], topk=s.topk)
    fallbacks = (first.get("lung_fallbacks") or {}).get("files")
    fallbacks = None if first.get("lung_fallbacks") is None else [k for k in fallbacks or [] if k in order]
    excluded = {name: r[0]["training_patients_excluded"] for name, r in results.items() if r[0].get("training_patients_excluded")}
    metrics.update({
        "set_definition": s.definition,
        "training_patients_excluded": excluded or None,  # per member: each left its own training patients out
        "model": ensemble.name,
        "checkpoint": ensemble.path,
        "members": [{"model": m.name, "checkpoint": str(m.path)} for m in ensemble.members],
        "input_spec": first.get("input_spec"),  # the members' (check_ensemble)
        "lung_fallbacks": None if fallbacks is None else {"n": len(fallbacks), "files": fallbacks},
        "precision": ensemble.scoring,
        "bootstrap": {"n_boot": n_boot, "seed": seed},
    })
    for d in dirs:
        write_eval(d, records, probs, metrics)
        release(d / INCOMPLETE)
    return metrics


def kept_results(models, sets: list[EvalSet], out_dirs: dict[tuple[str, str], list[Path]], device, n_boot: int, seed: int
                 ) -> tuple[dict[tuple[str, str], list[Path]], dict[tuple[str, str], list[Path]]]:
    """``(out_dirs still to write, kept)``: ``kept[(model, set)]`` are the directories that already hold this very
    evaluation, complete (an interrupted run of the same command, or of the same training, finished them): kept, not
    refused and not redone. Every caller (evaluate.py and training's eval_sets) goes through here; ``models`` may
    include an :class:`Ensemble`."""
    paths = {m.name: m.path for m in models}
    how = {m.name: {**scoring_of(m, device), "bootstrap": {"n_boot": n_boot, "seed": seed}} for m in models}
    definitions = {s.name: s.definition for s in sets}
    kept = {}
    for (model, set_name), dirs in out_dirs.items():
        done = [d for d in dirs if same_result(d, paths[model], definitions[set_name], how[model])]
        if done:
            print(f"note: {model} on {set_name}: already evaluated by the same command, kept: {', '.join(map(str, done))}")
            kept[(model, set_name)] = done
    return {pair: [d for d in dirs if d not in kept.get(pair, ())] for pair, dirs in out_dirs.items()}, kept


def eval_dir(run: RunDir, set_name: str) -> Path:
    try:
        return run.eval_dir(set_name)
    except ValueError as err:
        raise EvalError(str(err)) from err


def add_summary(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` to summary.csv: the rows of earlier evaluations into the same out_dir are kept. Under an
    exclusive lock, so evaluations finishing at the same time both land."""
    with FileLock(path.with_name(f".{path.name}.lock")):
        before = []
        if path.is_file():
            with open(path, newline="") as f:
                before = list(csv.DictReader(f))
        seen = {_row_key(r) for r in before}  # rows of evaluations kept from an interrupted run may be there already
        rows = [r for r in rows if _row_key(r) not in seen]
        if not rows:
            return
        fields = list(dict.fromkeys([*(before[0] if before else {}), *rows[0]]))
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows([*before, *rows])


def _row_key(row: dict) -> tuple:
    return tuple(sorted((k, "" if v is None else str(v)) for k, v in row.items()))


# --- training's eval_sets --------------------------------------------------------------------------------------
def load_sets_for_training(names, eval_data: str | None) -> list[EvalSet]:
    """Training's ``eval_sets``: each named set read and checked before training starts (a bad set costs no training)."""
    names = set_names(names)
    if len(set(names)) != len(names):
        raise EvalError(f"eval_sets={names} names a set twice.")
    sets = [load_set(n, set_config(n, eval_data)) for n in names]
    for s in sets:
        decode(s, set(), progress=False)  # every image decoded once now: an unreadable one fails before hours of training
    return sets


def evaluate_trained(model: nn.Module, datamodule, best_checkpoint: str | Path, sets: list[EvalSet], run_dir: Path, batch_size: int = 32,
                     n_boot: int = stats.DEFAULT_BOOT, precision: str = "32-true", channels_last: bool = False, device: str = "cpu") -> list[dict]:
    """The model training has just fitted, holding its best checkpoint's weights, on each set, into
    ``<run dir>/eval/<set>/`` (training's ``eval_sets``), named and recorded as evaluate.py names and records that
    checkpoint. Training passes its data module (the input spec and preprocessing the model was trained with), the
    run's precision, memory format and device, so an eval set's P(COVID) are computed as the run's own
    ``predictions_test.csv`` are (and evaluate.py, reading them from the run's metrics.json, agrees)."""
    (choice,), _ = resolve_checkpoints([str(best_checkpoint)])
    m = EvalModel(model_name(choice, dict(model.hparams)), choice.path, model.to(device), datamodule)
    how = scoring(m.path, precision, channels_last, device)
    how["from"] = {"precision": "the training run", "channels_last": "the training run"}
    set_scoring(m, how)
    out_dirs = {(m.name, s.name): [eval_dir(RunDir(run_dir), s.name)] for s in sets}
    # a resumed run whose first training wrote some sets before it was stopped keeps them
    out_dirs, kept = kept_results([m], sets, out_dirs, device, n_boot, stats.DEFAULT_SEED)
    return evaluate_models([m], sets, out_dirs, batch_size, device, n_boot, stats.DEFAULT_SEED, progress=False,
                           kept={pair: dirs[0] for pair, dirs in kept.items()})
