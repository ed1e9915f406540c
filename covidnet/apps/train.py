"""`train(cfg)`: fit, test the best-on-validation checkpoint, write metrics.json and test predictions.

``main`` is the command line of both ``python train.py`` (a checkout) and ``covidnet-train`` (an installed
package): ``python train.py -m init=scratch,imagenet`` (see README.md)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf, open_dict

from covidnet.images.augment import OPTIONS as AUGMENT_OPTIONS
from covidnet.models.backbones import OPTIONS as BACKBONE_OPTIONS
from covidnet.explain.cam import OPTIONS as CAM_OPTIONS
from covidnet.trained.checkpoint import check_weights_fit, read_checkpoint
from covidnet.data.datamodule import OPTIONS as DATA_OPTIONS
from covidnet.rundirs import hydra_jobs
from covidnet.apps.cli import hydra_app
from covidnet.core.errors import ConfigError
from covidnet.trained.evaluation import evaluate_trained, load_sets_for_training
from covidnet.core.hardware import OPTIONS as HARDWARE_OPTIONS
from covidnet.core.hardware import TRAINER_OPTIONS
from covidnet.core.hardware import HardwareChoice, apply_threads, resolve
from covidnet.models.inits import OPTIONS as INIT_OPTIONS
from covidnet.models.inits import apply_arch_defaults
from covidnet.models.model import OPTIONS as MODEL_OPTIONS
from covidnet.data.multisource import OPTIONS as SOURCE_OPTIONS
from covidnet.data.multisource import scalars as source_scalars
from covidnet.data.multisource import source_metrics
from covidnet.core.options import SEED, Across, Rule, Table, boolean, check_config, in_group, integer, optional
from covidnet.images.preprocess import OPTIONS as PREPROCESS_OPTIONS
from covidnet.trained.resume import Resume, accepted_record, check_resume
from covidnet.core.write_check import check_writable
from covidnet.rundirs.run_files import LAST_CHECKPOINT
from covidnet.rundirs.run_lock import owning
from covidnet.rundirs.runs import RunDir
from covidnet.data.training_sources import OPTIONS as TRAINING_SOURCES_OPTIONS
from covidnet.data.sets import SET_OPTIONS
from covidnet.metrics.stats import binary_metrics
from covidnet.models.test_predictions import TestPredictions
from covidnet.core.timing import EpochTimes
from covidnet.models.training_recipe import NOT_SELECTABLE

log = logging.getLogger(__name__)

# train.py (conf/train.yaml and its groups): every option, checked before any data is read or model built.
# Each module declares its own keys (covidnet.core.options); ``seed`` first: data.seed=${seed} is then reported once.
TRAIN: Table = {
    "seed": SEED,
    "test": boolean(),
    **DATA_OPTIONS,
    **TRAINING_SOURCES_OPTIONS,
    **PREPROCESS_OPTIONS,
    **AUGMENT_OPTIONS,
    **SOURCE_OPTIONS,
    **BACKBONE_OPTIONS,
    **INIT_OPTIONS,
    **MODEL_OPTIONS,
    "trainer.max_epochs": integer(1).because("a run of 0 epochs trains nothing and has no result"),
    "trainer.check_val_every_n_epoch": optional(integer(1)),
    "trainer.log_every_n_steps": integer(1),
    "trainer.deterministic": Rule("true, false or warn", lambda v: isinstance(v, bool) or v == "warn"),
    **TRAINER_OPTIONS,
    "trainer.check_val_every_n_epoch+trainer.max_epochs": Across(("trainer.check_val_every_n_epoch", "trainer.max_epochs"),
                                                                 lambda values: _validation_runs(values)),
    # the CAM callback (callbacks.cam; null switches it off): a bad value refused now, not after the first epoch
    **in_group("callbacks.cam", {
        **{f"callbacks.cam.{key}": rule for key, rule in CAM_OPTIONS.items()},
        "callbacks.cam.k": integer(1).because("images per class whose maps are logged"),
        "callbacks.cam.every_n_epochs": integer(1),
        "callbacks.cam.log_test": boolean(),
    }),
    **SET_OPTIONS,
    **HARDWARE_OPTIONS,  # speed settings resolved for the machine (auto) or forced
}

__all__ = ["main", "train", "check_run_dir", "instantiate_all"]


def _validation_runs(values: dict) -> list[str]:
    """Validation every n epochs with fewer epochs than n never validates: no best checkpoint, so no test result,
    found out only after the training."""
    every, epochs = values["trainer.check_val_every_n_epoch"], values["trainer.max_epochs"]
    if every is not None and every > epochs:
        return [f"trainer.check_val_every_n_epoch={every} with trainer.max_epochs={epochs}: validation would never run, so no "
                f"checkpoint would be chosen and nothing tested; use trainer.check_val_every_n_epoch <= {epochs}"]
    return []


def instantiate_all(group: DictConfig | None) -> list:
    """Objects for every entry of a config group that has a ``_target_`` (null entries switch one off)."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def without_near_duplicates(names: list[str], labels, probs, excluded: set[str]) -> dict:
    """Test metrics on the test images that have no near-duplicate picture in train or val (docs/near_duplicates.md),
    reported beside the metrics on the whole split."""
    keep = np.array([n not in excluded for n in names], bool)
    labels, probs = np.asarray(labels)[keep], np.asarray(probs, float)[keep]
    out: dict = {"n_images": int(keep.sum()), "excluded": sorted(n for n in names if n in excluded)}
    if len(labels) and 0 < labels.sum() < len(labels):
        out.update({f"test/{k}": float(v) for k, v in binary_metrics(labels, probs).items()})
    return out


def check_run_dir(out: Path, ckpt_path: str | None) -> None:
    """Refuse to start a new run where one already left results (see RunDir.check_fresh)."""
    RunDir(out).check_fresh(ckpt_path)


def choose_hardware(cfg: DictConfig) -> HardwareChoice:
    """Resolve ``trainer.precision=auto``, ``channels_last`` and ``threads`` for this machine and write the
    result into ``cfg``, so the Trainer, the logged hyperparameters and metrics.json all carry it."""
    choice = resolve(
        cfg.trainer.get("precision", "auto"),
        cfg.get("channels_last", "auto"),
        cfg.trainer.get("accelerator", "auto"),
        cfg.get("threads"),
    )
    apply_threads(cfg.get("threads"))
    with open_dict(cfg):
        cfg.trainer.precision = choice.precision
        cfg.channels_last = choice.channels_last
        cfg.threads = choice.threads
    log.info("covidnet hardware: %s", choice.summary())
    return choice


def train(cfg: DictConfig) -> dict:
    """Train and test one model as configured; return the metrics also written to metrics.json.

    Each step below is one function: what it checks, builds or writes is said there (the order matters: every
    check comes before any data is read or trained on)."""
    out = open_run(cfg)
    with owning(out):  # one process per run directory (covidnet/rundirs/run_lock.py), from here until the run is written
        check_run_dir(out, cfg.get("ckpt_path"))
        return run(cfg, out, check_resume(cfg, out, hydra_jobs.record_dir()))


def run(cfg: DictConfig, out: Path, resume: Resume | None) -> dict:
    """The run itself, in a run directory this process owns (see :func:`train`)."""
    if resume and resume.finished is not None:
        log.info(f"{out} already finished (metrics.json); nothing to resume, its results are kept as they are.")
        return resume.finished
    hardware = choose_hardware(cfg)
    L.seed_everything(cfg.seed, workers=True)
    # external sets for the best checkpoint (docs/external.md): read and checked now, before any training
    eval_sets = load_sets_for_training(cfg.get("eval_sets"), cfg.get("eval_data")) if cfg.get("eval_sets") else []
    datamodule = instantiate(cfg.data)
    model = build_model(cfg, hardware, resume)
    trainer, epoch_times = build_trainer(cfg)
    start = time.time()
    fit(trainer, model, datamodule, cfg, resume)
    metrics = fit_record(cfg, hardware, trainer, datamodule, epoch_times, time.time() - start, resume)
    best_path = metrics["best_checkpoint"] or ""
    if cfg.get("test"):
        metrics.update(score_test_split(trainer, model, datamodule, best_path, RunDir(out)))
    if eval_sets and best_path and trainer.is_global_zero:
        metrics["eval_sets"] = evaluate_external(model, datamodule, best_path, eval_sets, out, cfg, hardware, trainer)
    metrics["wall_seconds"] = round(time.time() - start, 1)
    if trainer.is_global_zero:
        RunDir(out).write_metrics(metrics)
    return metrics


def open_run(cfg: DictConfig) -> Path:
    """Check every option and that the run directory can be written, then create it. :func:`train` then owns it and
    checks it is not another run's and that a resume continues the run it resumes (covidnet/trained/resume.py)."""
    apply_arch_defaults(cfg)  # data.normalization=null: the architecture's own, so the data and the model's input spec agree
    check_config(cfg, TRAIN, ConfigError)  # every option, before any data is read or model built
    hydra_jobs.prepare_multirun_job_for_ddp()
    out = Path(cfg.paths.output_dir)
    check_writable(out, "run directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def build_model(cfg: DictConfig, hardware: HardwareChoice, resume: Resume | None) -> L.LightningModule:
    """The configured model; a resumed run's checkpoint must fit it before training starts (not when Lightning loads it)."""
    model = instantiate(cfg.model)
    if resume and resume.state_dict is not None:
        check_weights_fit(resume.checkpoint, model, resume.state_dict)
    model.set_channels_last(hardware.channels_last)
    return model


def build_trainer(cfg: DictConfig) -> tuple[L.Trainer, EpochTimes]:
    """The Trainer with the configured callbacks and loggers (the resolved config logged as hyperparameters), and
    the epoch timer it carries (and the test loop's predictions, covidnet/models/test_predictions.py); the checkpoint
    directory is checked writable before training, not after an epoch."""
    epoch_times = EpochTimes()
    callbacks = [*instantiate_all(cfg.get("callbacks")), epoch_times, TestPredictions()]
    loggers = instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    ckpt_cb = checkpoints(trainer)
    if ckpt_cb is not None and ckpt_cb.dirpath:
        check_writable(ckpt_cb.dirpath, "checkpoint directory")
    return trainer, epoch_times


def checkpoints(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The Trainer's ModelCheckpoint (best on validation, last), if it has one."""
    return trainer.checkpoint_callback if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else None


def fit(trainer: L.Trainer, model: L.LightningModule, datamodule, cfg: DictConfig, resume: Resume | None) -> None:
    """Train, from scratch or from the resumed checkpoint (``ckpt_path`` for Lightning's own resume)."""
    # resuming reads tensors and plain values only: a checkpoint cannot run code (docs/reliability.md)
    ckpt_path = str(resume.checkpoint) if resume and resume.checkpoint else cfg.get("ckpt_path")
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)


def fit_record(cfg: DictConfig, hardware: HardwareChoice, trainer: L.Trainer, datamodule, epoch_times: EpochTimes,
               fit_seconds: float, resume: Resume | None) -> dict:
    """metrics.json's account of the fit: settings, time, checkpoints, the best validation score, the data seen."""
    ckpt_cb = checkpoints(trainer)
    best_path = ckpt_cb.best_model_path if ckpt_cb else ""
    last_path = Path(ckpt_cb.dirpath) / LAST_CHECKPOINT if ckpt_cb and ckpt_cb.save_last and ckpt_cb.dirpath else None
    metrics: dict = {
        "init": cfg.model.init,
        "arch": cfg.model.arch,
        "seed": cfg.seed,
        "hardware": hardware.as_dict(),
        "epochs_trained": trainer.current_epoch,
        "fit_seconds": round(fit_seconds, 1),
        "epoch_seconds": epoch_times.seconds,  # this process's epochs (a resumed run: those after the checkpoint)
        **RunDir.metrics_record(best_path, last_path if last_path and last_path.is_file() else None),
        "best_val_metric": ckpt_cb.monitor if ckpt_cb else None,
        "best_val_score": float(ckpt_cb.best_model_score) if ckpt_cb and ckpt_cb.best_model_score is not None else None,
        "best_epoch": RunDir.checkpoint_epoch(best_path),
        # training images actually used (data.fraction keeps a stratified subset): the data-efficiency axis
        "train_images": len(datamodule.datasets["train"]) if "train" in getattr(datamodule, "datasets", {}) else None,
    }
    if hasattr(datamodule, "spec"):
        # what the network saw, and the images whose lung field was not found (used whole, never dropped)
        fallbacks = getattr(datamodule, "lung_fallbacks", {})
        metrics["input_spec"] = datamodule.spec.as_dict()
        metrics["lung_fallbacks"] = {"n": len(fallbacks), "files": dict(sorted(fallbacks.items()))} if datamodule.spec.needs_lungs else None
    # without a best-on-validation checkpoint (fast_dev_run, no validation) there is no trained model to test
    metrics["trained"] = bool(best_path)
    if metrics["best_val_score"] == NOT_SELECTABLE:  # val/select: no epoch met the selection rule
        metrics["not_selectable"] = ("no epoch met the selection rule (from model.select_from_epoch on, and not calling every "
                                     "validation image one class): the checkpoint tested is the first such epoch, chosen by no rule")
        log.warning(f"{cfg.paths.output_dir}: {metrics['not_selectable']}")
    if resume and resume.accepted:
        metrics["resumed_with_changes"] = accepted_record(resume.accepted)
    return metrics
def score_test_split(trainer: L.Trainer, model: L.LightningModule, datamodule, best_path: str, run_dir: RunDir) -> dict:
    """The test split on the best-on-validation checkpoint: its metrics, per source where there are several, the
    predictions file (predictions_test.csv) and the metrics without near-duplicates of train/val images."""
    out: dict = {}
    if not best_path:
        out["test"] = None
        out["not_tested"] = "no best checkpoint was saved (fast_dev_run, or validation never ran): no test result"
        log.warning(f"{run_dir.path}: {out['not_tested']}; metrics.json records only what was trained.")
        return out
    results = trainer.test(model, datamodule=datamodule, ckpt_path=best_path, weights_only=True)
    out["test"] = {k: float(v) for k, v in results[0].items()} if results else {}
    if not trainer.is_global_zero:
        return out
    # the test loop's own probabilities (covidnet/models/test_predictions.py): metrics.json's test numbers and the file agree
    tested = next(cb for cb in trainer.callbacks if isinstance(cb, TestPredictions))
    probs, labels = tested.probs, tested.labels
    names = datamodule.split_names("test")
    if len(datamodule.test_source_names()) > 1:
        # each source on its own as well as pooled (covidnet/data/multisource.py); never used to select the model
        out["test_by_source"] = source_metrics(datamodule.items["test"], datamodule.records["test"], probs)
        for logger in trainer.loggers:
            logger.log_metrics(source_scalars(out["test_by_source"]), step=trainer.global_step)
    items = datamodule.items["test"]
    out["n_test_predictions"] = len(names)  # what predictions_test.csv holds: a reader refuses a file cut short
    run_dir.write_predictions(names, labels.tolist(), probs,
                              extra={"source": [it.source for it in items], "patient": [it.patient or "" for it in items]})
    out["test_without_near_duplicates"] = without_near_duplicates(names, labels, probs, getattr(datamodule, "test_near_duplicates", set()))
    return out


def evaluate_external(model: L.LightningModule, datamodule, best_path: str, eval_sets: list, out: Path, cfg: DictConfig,
                      hardware: HardwareChoice, trainer: L.Trainer) -> dict:
    """The trained model with its best checkpoint's weights on each of ``eval_sets``, in memory with its data module's
    input spec (covidnet.trained.evaluation; written to <run dir>/eval/<set>/, docs/external.md); metrics.json names where
    each went, and one line per set is printed."""
    if not cfg.get("test"):  # trainer.test loaded the best weights into the model; without a test, they are loaded here
        model.load_state_dict(read_checkpoint(best_path)["state_dict"])
    # in the run's precision, memory format and device, as its predictions_test.csv (same images, same numbers)
    rows = evaluate_trained(model, datamodule, best_path, eval_sets, out, batch_size=int(cfg.data.batch_size), precision=hardware.precision,
                            channels_last=hardware.channels_last, device=str(trainer.strategy.root_device))
    for row in rows:
        if row["level"] == "slices" and row["subset"] == "all":
            print(f"{row['set']}: AUROC {row['auroc']}, sensitivity {row['sensitivity']}, mean P(COVID) {row['mean_prob_covid']:.3f}")
    return {s.name: str(RunDir(out).eval_dir(s.name)) for s in eval_sets}


@hydra_app("train")
def main(cfg: DictConfig) -> float | None:
    """Train as configured; the test AUROC is what a Hydra sweeper would optimise (None: nothing was tested,
    e.g. fast_dev_run, where metrics.json records ``"test": null``)."""
    metrics = train(cfg)
    return (metrics.get("test") or {}).get("test/auroc")
