"""`evaluate(cfg)`: trained checkpoints on image sets beyond the training split (see docs/external.md).

Each model is rebuilt from its checkpoint alone and sees every image through the preprocessing stored
with it (the data-module hyperparameters in the checkpoint), the same code path as training and
visualize.py. Sets are read by :mod:`covidnet.images.sources` and everything is checked (checkpoints, sets, output
directories) before the first prediction; outputs go to a fresh directory and are never overwritten:

    <out_dir>/<model>/<set>/metrics.json     intervals per slice (patients resampled) and per patient
    <out_dir>/<model>/<set>/predictions.csv  path (the record's key), patient, label, diagnosis, position, slice_label, prob_covid
    <out_dir>/summary.csv                    one row per model, set, level and comparison

With ``into_runs=true`` (checkpoints given as run or sweep directories) each run's results also go to
``<run dir>/eval/<set>/``, where ``python -m covidnet.report`` picks them up (training with ``eval_sets``
writes there directly). With ``ensemble=true`` the checkpoints (sharing their input spec) are also scored as one
model, the mean of their P(COVID), as ``<out_dir>/ensemble of <n>/<set>/``, on every set and on the official test
split. Scoring and writing is the library covidnet.trained.evaluation (training's ``eval_sets`` calls it too); this app
reads the command line, loads the checkpoints and prints the summary. Which checkpoint stands for a run is
covidnet.rundirs.run_checkpoints' decision, the sets are covidnet.data.sets', their statistics covidnet.metrics.set_metrics'.

``main`` is the command line of both ``python evaluate.py`` and ``covidnet-evaluate``:
``python evaluate.py ckpt=<sweep dir> eval=[covid_ct_md,semiseg]``, where ``eval=a,b`` also means a list of sets.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig

from covidnet.trained.checkpoint import OPTIONS as CHECKPOINT_OPTIONS
from covidnet.trained.checkpoint import CheckpointError, load_models
from covidnet.apps.cli import hydra_app
from covidnet.core.errors import ConfigError, EvalError, UserError
from covidnet.rundirs.eval_lock import call_mark, check_fresh, let_go, release, remove_finished_calls
from covidnet.trained.evaluation import Ensemble, EvalModel, add_summary, check_ensemble, eval_dir, evaluate_models, kept_results
from covidnet.core.hardware import DEVICE, EVAL_PRECISION
from covidnet.core.options import SEED, Rule, Table, boolean, check_config, integer, optional
from covidnet.images.preprocess import OPTIONS as PREPROCESS_OPTIONS
from covidnet.rundirs.run_checkpoints import best_checkpoint, resolve_checkpoints, run_of
from covidnet.rundirs.run_files import METRICS_FILE
from covidnet.trained.set_scoring import RUN, scoring, set_scoring
from covidnet.data.sets import SET_OPTIONS, load_set, set_config
from covidnet.core.write_check import check_writable

IN_SPLIT = "covid_ct_test"  # the official COVID-CT test split as a set (conf/eval/covid_ct_test.yaml): an ensemble's in-split number

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


# evaluate.py (conf/evaluate.yaml); each set's own keys are checked by covidnet.data.sets.load_set
EVALUATE: Table = {
    **CHECKPOINT_OPTIONS,
    "eval_data": SET_OPTIONS["eval_data"],
    # the preprocessing a user may state (STATED_PREPROCESSING); null: the checkpoint's
    **{f"data.{name}": optional(PREPROCESS_OPTIONS[f"data.{name}"]) for name in STATED_PREPROCESSING},
    "precision": EVAL_PRECISION,
    "channels_last": Rule("run (the training run's), true or false", lambda v: isinstance(v, bool) or v == "run"),
    "into_runs": boolean(),
    "ensemble": boolean().because("true also scores the checkpoints' mean P(COVID) as one model"),
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
        models = [EvalModel.of(m) for m in load_models(chosen, "unused", device)]
    except CheckpointError:
        raise
    except ValueError as err:
        raise EvalError(str(err)) from err
    if cfg.get("ensemble"):
        check_ensemble(models)  # members that see images alike, before any set is read
    stated = {k: cfg.get("data", {}).get(k) for k in STATED_PREPROCESSING}
    for m in models:
        m.notes = preprocessing_notes(m.name, m.datamodule.spec.as_dict(), stated)
        set_scoring(m, scoring(m.path, cfg.get("precision", RUN), cfg.get("channels_last", RUN), device))
    ensemble = Ensemble(models, str(device)) if cfg.get("ensemble") else None
    sets_cfg = dict(sets_cfg)
    if ensemble is not None and IN_SPLIT not in sets_cfg:
        print(f"note: ensemble=true: the official test split ({IN_SPLIT}, {set_config(IN_SPLIT, cfg.eval_data).root}) is scored too, "
              f"for the in-split number (pass eval=[{IN_SPLIT},...] eval.{IN_SPLIT}.root=... to read it elsewhere)")
        sets_cfg[IN_SPLIT] = set_config(IN_SPLIT, cfg.eval_data)
    sets = [load_set(name, sets_cfg[name]) for name in sets_cfg]
    scored = [*models, *([ensemble] if ensemble else [])]  # the ensemble's results go to out_dir only, never into runs
    out_dirs = {(m.name, s.name): [out / m.name / s.name] for m in scored for s in sets}
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
    out_dirs, kept = kept_results(scored, sets, out_dirs, device, int(cfg.n_boot), int(cfg.seed))
    check_fresh([d for dirs in out_dirs.values() for d in dirs])  # before anything is created
    out.mkdir(parents=True, exist_ok=True)
    mark = call_mark(out, [f"{m}/{s}" for m, s in out_dirs])
    try:
        rows = evaluate_models(models, sets, out_dirs, int(cfg.batch_size), device, int(cfg.n_boot), int(cfg.seed),
                               bool(cfg.get("progress", True)), {pair: dirs[0] for pair, dirs in kept.items()}, ensemble)
    except KeyboardInterrupt:
        let_go(mark)
        raise SystemExit(interrupted(out_dirs, kept)) from None
    except BaseException:
        let_go(mark)
        raise
    add_summary(out / "summary.csv", rows)
    release(mark)
    remove_finished_calls(out)
    print_summary(rows)
    print(f"results: {out}")
    return {"out_dir": str(out), "rows": rows}


def interrupted(out_dirs: dict[tuple[str, str], list[Path]], kept: dict[tuple[str, str], list[Path]]) -> int:
    """After Ctrl-C: one line saying which evaluations are complete and kept and how to finish the rest; exit status 130."""
    pairs = sorted(set(out_dirs) | set(kept))
    complete = [p for p in pairs if all((d / METRICS_FILE).is_file() for d in [*out_dirs.get(p, []), *kept.get(p, [])])]
    missing = [f"{m} on {s}" for m, s in pairs if (m, s) not in complete]
    print(f"Interrupted: {len(complete)} of {len(pairs)} evaluation(s) complete and kept; not finished: {', '.join(missing) or 'none'}. "
          "Run the same command again to finish them.", file=sys.stderr)
    return 130


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
