"""`evaluate(cfg)`: trained checkpoints on image sets beyond the training split (see docs/external.md).

Each model is rebuilt from its checkpoint alone and sees every image through the preprocessing stored
with it (the data-module hyperparameters in the checkpoint), the same code path as training and
visualize.py. Sets are read by :mod:`covidnet.sources` and everything is checked (checkpoints, sets, output
directories) before the first prediction; outputs go to a fresh directory and are never overwritten:

    <out_dir>/<model>/<set>/metrics.json     intervals per slice (patients resampled) and per patient
    <out_dir>/<model>/<set>/predictions.csv  path (the record's key), patient, label, diagnosis, position, slice_label, prob_covid
    <out_dir>/summary.csv                    one row per model, set, level and comparison

With ``into_runs=true`` (checkpoints given as run or sweep directories) each run's results also go to
``<run dir>/eval/<set>/``, where ``python -m covidnet.report`` picks them up (training with ``eval_sets``
writes there directly). Both are written by covidnet.run_files.write_eval and read back by its read_eval; which
checkpoint stands for a run is covidnet.run_checkpoints' decision, the sets are covidnet.sets', their statistics
covidnet.set_metrics'.

``main`` is the command line of both ``python evaluate.py`` and ``covidnet-evaluate``:
``python evaluate.py ckpt=<sweep dir> eval=[covid_ct_md,semiseg]``, where ``eval=a,b`` also means a list of sets.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import DictConfig

from covidnet import stats
from covidnet.atomic import atomic_path, write_json
from covidnet.checkpoint import OPTIONS as CHECKPOINT_OPTIONS
from covidnet.checkpoint import CheckpointError, load_models
from covidnet.claims import INCOMPLETE, check_fresh, claim, owner_of, same_result
from covidnet.entry import hydra_app
from covidnet.errors import ConfigError, EvalError, UserError
from covidnet.hardware import DEVICE, EVAL_PRECISION
from covidnet.options import SEED, Rule, Table, boolean, check_config, integer, optional
from covidnet.preprocess import OPTIONS as PREPROCESS_OPTIONS
from covidnet.processes import pid_alive
from covidnet.atomic import check_writable
from covidnet.run_checkpoints import best_checkpoint, resolve_checkpoints, run_of
from covidnet.run_files import METRICS_FILE, copy_eval, read_metrics, write_eval
from covidnet.runs import RunDir
from covidnet.set_metrics import set_metrics, summary_rows
from covidnet.set_scoring import RUN, decode, predict, scoring, set_scoring
from covidnet.sets import SET_OPTIONS, EvalSet, held_out, load_set, set_config, set_names

# preprocessing keys a user may state (evaluate.yaml `data:`); the checkpoint's values always win
STATED_PREPROCESSING = ("image_size", "normalization", "field", "intensity", "crop_margin")


# --- checkpoints ---------------------------------------------------------------------------------------------
def preprocessing_notes(name: str, spec: dict, stated: dict) -> list[str]:
    """A note for each ``data.<key>`` the user stated that differs from the checkpoint's input spec (which wins)."""
    notes = []
    for key, value in stated.items():
        if value is not None and key in spec and spec[key] != value:
            notes.append(f"{name}: trained with data.{key}={spec[key]}; data.{key}={value} is ignored "
                         "(the checkpoint's preprocessing wins)")
    return notes


def evaluate_models(models, sets: list[EvalSet], out_dirs: dict[tuple[str, str], list[Path]], batch_size: int, device, n_boot: int,
                    seed: int, progress: bool = True, kept: dict[tuple[str, str], Path] | None = None) -> list[dict]:
    """Predict and write results for every (model, set); returns summary rows. ``out_dirs[(model, set)]``: where to write.

    Each set is decoded once per distinct input spec among the models (covidnet.preprocess.InputSpec, from each
    checkpoint), and each metrics.json records that whole spec, the images used whole for want of a lung field,
    and the precision the probabilities were computed in. ``kept[(model, set)]``: a complete result of the same
    evaluation (:func:`kept_results`); a pair with no directory left to write gives its summary rows from it."""
    all_dirs = [d for dirs in out_dirs.values() for d in dirs]
    check_fresh(all_dirs)
    marks = claim(all_dirs, f"{len(models)} model(s) on {', '.join(s.name for s in sets)}")
    try:
        return _evaluate_models(models, sets, out_dirs, batch_size, device, n_boot, seed, progress, kept or {})
    except BaseException:  # an error, not a kill: directories left unwritten are not marked as being written
        for mark in marks:
            if not (mark.parent / METRICS_FILE).exists():
                mark.unlink(missing_ok=True)
        raise


def _evaluate_models(models, sets, out_dirs, batch_size, device, n_boot, seed, progress, kept) -> list[dict]:
    rows = []
    for s in sets:
        for m in models:
            done = kept.get((m.name, s.name))
            if done is not None:  # the same evaluation is complete elsewhere: copied where it is missing, not redone
                for d in out_dirs[(m.name, s.name)]:
                    copy_eval(done, d)
                    (d / INCOMPLETE).unlink(missing_ok=True)
                rows += summary_rows(m.name, read_metrics(done / METRICS_FILE))
        todo = [m for m in models if (m.name, s.name) not in kept]
        if not todo:
            continue
        decoded = decode(s, {m.datamodule.spec for m in todo}, progress)
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
                (d / INCOMPLETE).unlink(missing_ok=True)
            rows += summary_rows(m.name, metrics)
    return rows


# evaluate.py (conf/evaluate.yaml); each set's own keys are checked by covidnet.sets.load_set
EVALUATE: Table = {
    **CHECKPOINT_OPTIONS,
    "eval_data": SET_OPTIONS["eval_data"],
    # the preprocessing a user may state (STATED_PREPROCESSING); null: the checkpoint's
    **{f"data.{name}": optional(PREPROCESS_OPTIONS[f"data.{name}"]) for name in STATED_PREPROCESSING},
    "precision": EVAL_PRECISION,
    "channels_last": Rule("run (the training run's), true or false", lambda v: isinstance(v, bool) or v == "run"),
    "into_runs": boolean(),
    "batch_size": integer(1),
    "device": DEVICE,
    "n_boot": integer(100).because("fewer resamples make the 2.5 % and 97.5 % percentiles meaningless"),
    "seed": SEED,
    "progress": boolean(),
}


def evaluate(cfg: DictConfig) -> dict:
    """Every checkpoint of ``cfg.ckpt`` on every set of ``cfg.eval``; everything is checked before work starts."""
    check_config(cfg, EVALUATE, ConfigError)  # every option, before any checkpoint or image is read
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
            run = run_of(m.path)
            if run is None:
                raise EvalError(f"into_runs=true: {m.path} is not in a training run directory (<run>/checkpoints/ with metrics.json).")
            if best_checkpoint(run.path).resolve() != m.path.resolve():
                raise EvalError(f"into_runs=true: {m.path} is not {run.path}'s best checkpoint; the run's eval area holds its best checkpoint's results only.")
            for s in sets:
                out_dirs[(m.name, s.name)].append(eval_dir(run, s.name))
    for s in sets:
        for note in s.notes:
            print(f"note: {note}")
    for m in models:
        for note in m.notes:
            print(f"note: {note}")
    # what an interrupted run of the same command already finished
    out_dirs, kept = kept_results(models, sets, out_dirs, device, int(cfg.n_boot), int(cfg.seed))
    check_fresh([d for dirs in out_dirs.values() for d in dirs])  # before anything is created
    out.mkdir(parents=True, exist_ok=True)
    # this call's mark on the whole: it stays (with the pairs written so far) if the evaluation is killed or fails
    mark = out / f"{INCOMPLETE}.{os.getpid()}.json"
    planned = [f"{m}/{s}" for m, s in out_dirs]
    write_json(mark, {"pid": os.getpid(), "pairs": planned, "note": "an evaluate.py call that has not finished (or was killed): "
                      "its pairs without metrics.json are missing, and summary.csv lacks its rows"})
    try:
        rows = evaluate_models(models, sets, out_dirs, int(cfg.batch_size), device, int(cfg.n_boot), int(cfg.seed),
                               bool(cfg.get("progress", True)), {pair: dirs[0] for pair, dirs in kept.items()})
    except KeyboardInterrupt:
        raise SystemExit(interrupted(out_dirs, kept)) from None
    add_summary(out / "summary.csv", rows)
    mark.unlink(missing_ok=True)
    for stale in out.glob(f"{INCOMPLETE}.*.json"):  # a killed call's mark, once every pair it meant is written
        owner = owner_of(stale)
        pairs = json.loads(stale.read_text()).get("pairs", []) if owner is not None and not pid_alive(owner) else None
        if pairs is not None and all((out / p / METRICS_FILE).is_file() for p in pairs):
            stale.unlink(missing_ok=True)
    print_summary(rows)
    print(f"results: {out}")
    return {"out_dir": str(out), "rows": rows}


def scoring_of(m, device) -> dict:
    """How a model's probabilities are computed (covidnet.set_scoring): the run's precision and memory format, or fp32."""
    return getattr(m, "scoring", None) or {"precision": "32-true", "channels_last": False, "device": str(device), "from": {}}


def kept_results(models, sets: list[EvalSet], out_dirs: dict[tuple[str, str], list[Path]], device, n_boot: int, seed: int
                 ) -> tuple[dict[tuple[str, str], list[Path]], dict[tuple[str, str], list[Path]]]:
    """``(out_dirs still to write, kept)``: ``kept[(model, set)]`` are the directories that already hold this very
    evaluation, complete (an interrupted run of the same command, or of the same training, finished them): kept, not
    refused and not redone. Every caller (evaluate.py and training's eval_sets) goes through here."""
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


def interrupted(out_dirs: dict[tuple[str, str], list[Path]], kept: dict[tuple[str, str], list[Path]]) -> int:
    """After Ctrl-C: one line saying which evaluations are complete and kept and how to finish the rest; exit status 130."""
    pairs = sorted(set(out_dirs) | set(kept))
    complete = [p for p in pairs if all((d / METRICS_FILE).is_file() for d in [*out_dirs.get(p, []), *kept.get(p, [])])]
    missing = [f"{m} on {s}" for m, s in pairs if (m, s) not in complete]
    print(f"Interrupted: {len(complete)} of {len(pairs)} evaluation(s) complete and kept; not finished: {', '.join(missing) or 'none'}. "
          "Run the same command again to finish them.", file=sys.stderr)
    return 130


def eval_dir(run: RunDir, set_name: str) -> Path:
    try:
        return run.eval_dir(set_name)
    except ValueError as err:
        raise EvalError(str(err)) from err


def add_summary(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` to summary.csv: the rows of earlier evaluations into the same out_dir are kept. Under an
    exclusive lock, so evaluations finishing at the same time both land."""
    import fcntl

    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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
    models = load_models([str(best_checkpoint)], "unused", device)
    for m in models:
        m.notes = []
        how = scoring(m.path, precision, channels_last, device)
        how["from"] = {"precision": "the training run", "channels_last": "the training run"}
        set_scoring(m, how)
    out_dirs = {(m.name, s.name): [eval_dir(RunDir(run_dir), s.name)] for m in models for s in sets}
    # a resumed run whose first training wrote some sets before it was stopped keeps them
    out_dirs, kept = kept_results(models, sets, out_dirs, device, n_boot, stats.DEFAULT_SEED)
    return evaluate_models(models, sets, out_dirs, batch_size, device, n_boot, stats.DEFAULT_SEED, progress=False,
                           kept={pair: dirs[0] for pair, dirs in kept.items()})


def print_summary(rows: list[dict]) -> None:
    def fmt(row, m):
        if row[m] is None:
            return "-"
        return f"{row[m]:.3f} (n/a)" if row[m + "_low"] is None else f"{row[m]:.3f} [{row[m + '_low']:.2f}, {row[m + '_high']:.2f}]"

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
    try:
        evaluate(cfg)
    except KeyboardInterrupt:  # before any prediction (while checkpoints or sets are read): nothing to keep
        print("Interrupted before any evaluation was written; nothing was kept.", file=sys.stderr)
        raise SystemExit(130) from None


def main(cfg: DictConfig | None = None) -> None:
    """``evaluate.py`` / ``covidnet-evaluate``: the command line with ``eval=a,b`` read as a list of sets, then
    Hydra; ``main(cfg)`` evaluates a composed config (no command line), like the other apps' ``main``."""
    if cfg is not None:
        return _main(cfg)
    sys.argv = list_overrides(sys.argv)
    _main()
