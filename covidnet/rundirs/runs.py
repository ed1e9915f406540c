"""A training run's directory and a sweep's: where each file is, what state a run is in, what a job is called.

``covidnet.apps.train`` writes a run directory through :class:`RunDir`; visualize, evaluation, the sweep report, the
study scripts and the benchmarks read it through the same class, so nobody else knows a file name, parses a path
or guesses from a directory's position. The file names and formats are in covidnet.rundirs.run_files; which checkpoint
of a run is used, in covidnet.rundirs.run_checkpoints.

Checkpoints are always found inside the run directory: metrics.json records the best checkpoint's
path, but only its file name is used, so a moved or copied sweep reads its own checkpoints. A sweep
directory (:class:`SweepDir`) holds job directories, Hydra's ``multirun.yaml`` and
``failed_jobs.jsonl``, the record of failed jobs written by ``covidnet.apps.hydra_callbacks.SweepReport``.

A run is in one of four states (:meth:`RunDir.state`):

- ``trained``: metrics.json is written and names a best checkpoint;
- ``not trained``: metrics.json is written but no checkpoint was ever selected (e.g. ``trainer.max_epochs=0``):
  there is no test result of a trained model;
- ``failed``: the sweep's failed-jobs record names the job;
- ``interrupted``: no metrics.json (killed, still running, or failed without a record).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from omegaconf import OmegaConf

from covidnet.core.atomic import write_json
from covidnet.core.configs import load
from covidnet.core.errors import UserError
from covidnet.rundirs.run_files import (
    CHECKPOINT_DIR,
    EVAL_DIR,
    FAILED_JOBS_FILE,
    HYDRA_DIR,
    LAST_CHECKPOINT,
    LAUNCHES_DIR,
    METRICS_FILE,
    MULTIRUN_FILE,
    PREDICTIONS_FILE,
    eval_results,
    read_eval,
    read_metrics,
    read_prediction_rows,
    write_predictions_csv,
)

TRAINED, NOT_TRAINED, FAILED, INTERRUPTED = "trained", "not trained", "failed", "interrupted"
STATES = (TRAINED, NOT_TRAINED, FAILED, INTERRUPTED)
_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


class RunDirError(UserError, RuntimeError):
    """Starting would overwrite an earlier run's results, or a run's files cannot be read."""


def not_job_keys() -> list[str]:
    """Override keys that do not name a job (data location, devices, resuming): Hydra's
    ``hydra.job.config.override_dirname.exclude_keys`` in conf/hydra/default.yaml, the one list of them."""
    keys = OmegaConf.select(load("hydra/default.yaml"), "job.config.override_dirname.exclude_keys")
    return [str(k) for k in keys or []]


def override_key(line: str) -> str:
    """``'++callbacks.cam=null'`` -> ``'callbacks.cam'`` (Hydra's add/delete prefixes stripped)."""
    return str(line).split("=", 1)[0].lstrip("+~")


def job_name_of(overrides: Iterable[str], exclude: Iterable[str]) -> str:
    """A job's name as Hydra's ``override_dirname`` forms it: the sorted overrides without the excluded keys."""
    skip = set(exclude)
    return ",".join(sorted(str(o) for o in overrides if override_key(o) not in skip))


def _read_yaml(path: Path):
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else None


class RunDir:
    """One training run's directory (it need not exist yet: train.py creates it)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- files -------------------------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def predictions_path(self) -> Path:
        return self.path / PREDICTIONS_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def hydra_dir(self) -> Path:
        return self.path / HYDRA_DIR

    def is_run(self) -> bool:
        """Whether the directory holds (the start of) a run: metrics, a Hydra record or checkpoints."""
        return self.metrics_path.is_file() or self.hydra_dir.is_dir() or self.checkpoint_dir.is_dir()

    def check_fresh(self, resume: str | None) -> None:
        """Refuse to start a new run (``resume`` None) where a run already left results."""
        if resume is None and (self.metrics_path.exists() or any(self.checkpoint_dir.glob("*.ckpt"))):
            raise RunDirError(
                f"{self.path} already holds a run. covidnet never overwrites results: pass ckpt_path=last to resume it, "
                "or choose a new output directory (leave hydra.run.dir / hydra.sweep.dir at their defaults)."
            )

    # --- metrics and predictions ---------------------------------------------------------------------------
    def read_metrics(self) -> dict | None:
        """metrics.json as a dict; None when the run has not written it (a damaged file raises ValueError)."""
        return read_metrics(self.metrics_path)

    def write_metrics(self, metrics: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.metrics_path, metrics)

    def read_prediction_rows(self, metrics: dict | None = None) -> list[dict]:
        """predictions_test.csv's rows (``file``, ``label`` int, ``prob_covid`` float, extra columns as written);
        empty when the run wrote none. Checked against the count metrics.json (or ``metrics``, read already)
        records (``n_test_predictions``): a file cut short raises ValueError."""
        if not self.predictions_path.is_file():
            return []
        metrics = self.read_metrics() if metrics is None else metrics
        return read_prediction_rows(self.predictions_path, (metrics or {}).get("n_test_predictions"))

    def read_predictions(self, metrics: dict | None = None) -> dict[tuple[str, int], float]:
        """predictions_test.csv -> ``{(file, label): P(COVID)}`` (:meth:`read_prediction_rows`, checked the same way)."""
        return {(r["file"], r["label"]): r["prob_covid"] for r in self.read_prediction_rows(metrics)}

    def write_predictions(self, files: Iterable[str], labels: Iterable[int], probs: Iterable[float],
                          extra: dict[str, Iterable] | None = None) -> None:
        """predictions_test.csv: file,label,prob_covid, then ``extra`` columns (e.g. source, patient)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_predictions_csv(self.predictions_path, files, labels, probs, extra)

    # --- checkpoints ---------------------------------------------------------------------------------------
    @staticmethod
    def metrics_record(best: str | Path | None, last: str | Path | None) -> dict:
        """The checkpoint entries of metrics.json (paths as written; readers use only the file names)."""
        return {"best_checkpoint": str(best) if best else None, "last_checkpoint": str(last) if last else None}

    def best_checkpoint(self) -> Path | None:
        """The best checkpoint inside this run directory, as named in metrics.json; None when the run has
        no metrics.json, selected none, or its file is not in ``checkpoints/`` (e.g. a copy without them)."""
        metrics = self.read_metrics() or {}
        best = metrics.get("best_checkpoint")
        if not best:
            return None
        path = self.checkpoint_dir / Path(str(best)).name  # never the recorded absolute path: the run may have moved
        return path if path.is_file() else None

    def last_checkpoint(self) -> Path | None:
        path = self.checkpoint_dir / LAST_CHECKPOINT
        return path if path.is_file() else None

    @staticmethod
    def checkpoint_epoch(path: str | Path | None) -> int | None:
        """The epoch (0-based) a checkpoint was written in, read from the checkpoint itself (memory-mapped:
        the weights are not read), so no file-name pattern has to be parsed."""
        if not path or not Path(path).is_file():
            return None
        import torch

        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - an old (non-zip) file cannot be mapped; read it whole
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
        return int(epoch) if epoch is not None else None

    # --- identity ------------------------------------------------------------------------------------------
    def overrides(self) -> list[str]:
        """The job's Hydra overrides as typed (``.hydra/overrides.yaml``); empty without a Hydra record."""
        return [str(x) for x in _read_yaml(self.hydra_dir / "overrides.yaml") or []]

    def override_values(self) -> dict[str, str]:
        """``{key: value as written}`` of the job's overrides (Hydra's parser, so quoting is handled)."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(self.overrides())
        return {o.get_key_element().lstrip("+~"): o.get_value_element_as_str() for o in parsed}

    def config(self) -> dict:
        """The job's composed config as Hydra saved it (``.hydra/config.yaml``, unresolved); empty without one."""
        return _read_yaml(self.hydra_dir / "config.yaml") or {}

    def job_name(self) -> str:
        """The job's name from its own Hydra record: ``override_dirname`` (e.g. ``init=imagenet,seed=1``)
        as Hydra set it, else formed the same way from its overrides; ``''`` when it has neither."""
        hydra_cfg = _read_yaml(self.hydra_dir / "hydra.yaml") or {}
        name = ((hydra_cfg.get("hydra") or {}).get("job") or {}).get("override_dirname")
        if isinstance(name, str) and "${" not in name:
            return name
        return job_name_of(self.overrides(), not_job_keys())

    # --- state ---------------------------------------------------------------------------------------------
    def trained(self, metrics: dict | None = None) -> bool:
        """Finished with a selected best checkpoint. A metrics.json that says ``"trained": false`` or
        records ``"best_checkpoint": null`` means nothing was trained (or nothing validated)."""
        metrics = self.read_metrics() if metrics is None else metrics
        if metrics is None or metrics.get("trained") is False:
            return False
        return not ("best_checkpoint" in metrics and not metrics["best_checkpoint"])

    def state(self, failed: bool = False) -> str:
        """``trained``, ``not trained``, ``failed`` (``failed``: the sweep's record names this job) or ``interrupted``."""
        metrics = self.read_metrics()
        if metrics is not None:
            return TRAINED if self.trained(metrics) else NOT_TRAINED
        return FAILED if failed else INTERRUPTED

    # --- external evaluations --------------------------------------------------------------------------------
    def eval_dir(self, set_name: str) -> Path:
        """``<run>/eval/<set>/``, where an external evaluation of this run writes metrics.json and predictions.csv."""
        if not _SET_NAME.fullmatch(str(set_name)):
            raise ValueError(f"eval set name {set_name!r}: use letters, digits, '_', '-', '.', '+' (it names a folder).")
        return self.path / EVAL_DIR / str(set_name)

    def eval_sets(self) -> list[str]:
        """Names of the external evaluations present (those with a metrics.json), sorted."""
        return eval_results(self.path / EVAL_DIR)

    def read_eval(self, set_name: str) -> tuple[dict, list[dict[str, str]]]:
        """(metrics.json, prediction rows) of one external evaluation (covidnet.rundirs.run_files.read_eval: the format
        evaluate.py and training's ``eval_sets`` write)."""
        return read_eval(self.eval_dir(set_name))


class SweepDir:
    """A multirun's directory: its job directories, its definition and its record of failed jobs."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    @property
    def failed_jobs_path(self) -> Path:
        return self.path / FAILED_JOBS_FILE

    def multirun_config(self) -> dict | None:
        """Hydra's ``multirun.yaml`` (unresolved); None when the folder has none."""
        cfg = _read_yaml(self.path / MULTIRUN_FILE)
        return cfg if isinstance(cfg, dict) else None

    def keep_launch_record(self) -> Path | None:
        """Copy the previous launch's multirun.yaml to ``launches/multirun-<UTC time it was written>.yaml`` before
        Hydra writes this launch's over it: a second ``-m`` into the same sweep directory keeps the first's record
        (its command and jobs). Returns the copy, None when there was nothing to keep."""
        current = self.path / MULTIRUN_FILE
        if not current.is_file():
            return None
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.gmtime(current.stat().st_mtime))
        folder = self.path / LAUNCHES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"multirun-{stamp}.yaml"
        n = 1
        while target.exists():
            n += 1
            target = folder / f"multirun-{stamp}-{n}.yaml"
        shutil.copy2(current, target)
        return target

    def launch_configs(self) -> list[dict]:
        """Every launch's multirun.yaml (unresolved), oldest first: those kept in ``launches/``, then the current one."""
        kept = sorted((self.path / LAUNCHES_DIR).glob("multirun-*.yaml"), key=lambda p: (p.stat().st_mtime, p.name))
        found = [_read_yaml(p) for p in [*kept, self.path / MULTIRUN_FILE]]
        return [cfg for cfg in found if isinstance(cfg, dict)]

    def job_dirs(self) -> list[RunDir]:
        """Directories holding a job (``.hydra/`` or ``metrics.json``) below the sweep, in name order; the
        folder itself when it is a single run."""
        if (self.path / METRICS_FILE).is_file() or (self.path / HYDRA_DIR / "overrides.yaml").is_file():
            return [RunDir(self.path)]
        jobs = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            here = Path(dirpath)
            if here != self.path and (METRICS_FILE in filenames or HYDRA_DIR in dirnames):
                jobs.append(here)
                dirnames[:] = []  # a job's own subdirectories (checkpoints, tensorboard, eval) hold no jobs
            else:
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        return [RunDir(p) for p in sorted(jobs)]

    # --- failed jobs ---------------------------------------------------------------------------------------
    def failed_jobs(self) -> list[dict]:
        """Failed jobs recorded for the sweep (``job``, ``num``, ``output_dir``, ``error``); empty when none failed."""
        if not self.failed_jobs_path.is_file():
            return []
        return [json.loads(line) for line in self.failed_jobs_path.read_text().splitlines() if line.strip()]

    def record_failure(self, job: str, num: int | None, output_dir: str | Path, error: str) -> dict:
        """Append one failed job. One line per write, opened for appending: jobs of a parallel launcher may
        end at the same time."""
        record = {"job": job, "num": num, "output_dir": str(output_dir), "error": error[:2000]}
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.failed_jobs_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)
        return record

    def failures(self) -> dict[str, str]:
        """``{resolved job dir: error}`` from the record, also keyed ``name:<dir name>`` so that a moved or
        copied sweep keeps its errors (see :meth:`failure_of`)."""
        out = {}
        for record in self.failed_jobs():
            if record.get("output_dir"):
                error = str(record.get("error", ""))
                out[str(Path(record["output_dir"]).resolve())] = error
                out[f"name:{Path(record['output_dir']).name}"] = error
        return out

    @staticmethod
    def failure_of(run: RunDir, failures: dict[str, str]) -> str:
        """The recorded error of ``run`` in a :meth:`failures` mapping, ``''`` when it has none."""
        return failures.get(str(run.path.resolve())) or failures.get(f"name:{run.path.name}", "")

