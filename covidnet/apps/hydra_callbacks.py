"""covidnet's Hydra callbacks (conf/hydra/default.yaml ``hydra.callbacks``): ``run_record`` checks the run or sweep
directory before Hydra creates it, ``sweep_report`` tracks a multirun's failed jobs and writes its report.

They run in the process that launches the jobs, and Hydra imports this module there: what it imports is paid by
every launch (the report is imported only when a multirun ends)."""

from __future__ import annotations

import atexit
import logging
import sys
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from covidnet.rundirs import run_lock
from covidnet.core.errors import UserError, debugging
from covidnet.rundirs.runs import SweepDir
from covidnet.core.write_check import check_writable

log = logging.getLogger(__name__)


class RunRecord(Callback):
    """The run or sweep directory is checked writable before Hydra creates it (else Hydra fails later with "Unable
    to configure handler 'file'"); for train.py this process then owns it (covidnet/rundirs/run_lock.py) before Hydra
    writes its config record there, so a second process into it is refused having written nothing."""

    def _check(self, directory: str, config: DictConfig, what: str) -> None:
        try:
            check_writable(directory, "output directory")
            if config.get("task_name") == "train":  # before Hydra writes its record there (covidnet/rundirs/run_lock.py)
                run_lock.acquire(directory, what)
        except UserError as err:
            if debugging():
                raise
            print(f"Error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, config, "run directory")

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        run_lock.release(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, config, "sweep directory")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        run_lock.release(config.hydra.sweep.dir)


def job_error(job_return: JobReturn) -> BaseException | None:
    """The exception a failed job raised (``JobReturn.return_value`` re-raises it), None for a finished job."""
    if job_return.status != JobStatus.FAILED:
        return None
    try:
        _ = job_return.return_value
    except BaseException as err:  # noqa: BLE001 - that is how Hydra hands the error over
        return err
    return None


class SweepReport(Callback):
    """The one tracker of a multirun's failed jobs, and the writer of its report.

    Hydra's basic sweeper runs every job even when one raises, then re-raises the first error and exits
    with status 1 without calling ``on_multirun_end``; its message shows one traceback. So each failed job
    is appended to ``<sweep dir>/failed_jobs.jsonl`` (``covidnet.rundirs.runs.SweepDir``) as it ends, every
    failed job is named at exit, and after the first failure ``report.md`` (covidnet.report) is rewritten
    at the end of every later job: the last rewrite then covers the whole sweep. The report reads the
    failures from that record. A report that cannot be written is logged, never raised: it must not turn
    a finished sweep into a failed one. ``enabled=false`` switches the report off, not the record.
    """

    def __init__(self, enabled: bool = True, cam: bool = False, n_boot: int = 2000, seed: int = 0, task_name: str = "train"):
        self.enabled, self.cam, self.n_boot, self.seed = enabled, cam, n_boot, seed
        self.task_name = task_name  # other apps sharing conf/hydra (visualize.py) have no training runs to report
        self.sweep: SweepDir | None = None
        self.failed_here = 0  # failed jobs of this process's sweep
        self._registered = False

    def _wanted(self, config: DictConfig) -> bool:
        return self.enabled and config.get("task_name") == self.task_name

    def _write(self, sweep_dir: str) -> None:
        from covidnet.report import write_report  # imported late: a sweep without failures pays nothing before it ends

        try:
            path = write_report(sweep_dir, cam=self.cam, n_boot=self.n_boot, seed=self.seed)
            log.info(f"Sweep report: {path}")
        except Exception as err:  # noqa: BLE001 - see the class docstring
            log.error(f"Could not write the sweep report for {sweep_dir} ({type(err).__name__}: {err}); "
                      f"run `python -m covidnet.report {sweep_dir}` to retry.")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep = SweepDir(config.hydra.sweep.dir)
        kept = self.sweep.keep_launch_record()  # before Hydra's sweeper writes this launch's multirun.yaml over it
        if kept is not None:
            log.info(f"{self.sweep.path} was launched into before: that launch's multirun.yaml is kept as {kept}")
        if not self._registered:
            atexit.register(self.summarise)
            self._registered = True

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        sweep = SweepDir(config.hydra.sweep.dir)
        err = job_error(job_return)
        if err is not None:
            job = config.hydra.get("job") or {}
            name = job.get("override_dirname") or f"job {job.get('num', '?')}"
            num = job.get("num")
            record = sweep.record_failure(name, int(num) if num is not None else None, config.hydra.runtime.output_dir, f"{type(err).__name__}: {err}")
            self.failed_here += 1
            log.error(f"Job {name} FAILED ({record['error'][:300]}); the sweep goes on with the other jobs.")
        if self._wanted(config) and self.failed_here:
            self._write(str(sweep.path))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._wanted(config):
            self._write(config.hydra.sweep.dir)

    def summarise(self) -> None:
        """At exit: name the failed jobs (Hydra's own message shows only the first traceback)."""
        if self.sweep is None:
            return
        failed = self.sweep.failed_jobs()
        if failed:
            names = "\n".join(f"  {f['job']}: {f['error'][:200]}" for f in failed)
            print(
                f"\n{len(failed)} job(s) of the sweep in {self.sweep.path} FAILED:\n{names}\n"
                f"Details: {self.sweep.failed_jobs_path} and each job's log. "
                f"Rerun only those jobs with the same overrides.",
                file=sys.stderr,
            )


__all__ = ["RunRecord", "SweepReport", "job_error"]
