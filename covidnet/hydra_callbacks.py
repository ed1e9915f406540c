"""Hydra callbacks (registered under ``hydra.callbacks`` in conf/hydra/default.yaml)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """Write ``report.md`` (covidnet.report) into the sweep directory when a multirun ends.

    Hydra skips ``on_multirun_end`` when a job raised (the sweep re-raises the job's error after all jobs
    ran), so after the first failure the report is also rewritten at the end of every later job: the
    last rewrite then covers the whole sweep. A report that cannot be written is logged, never raised:
    it must not turn a finished sweep into a failed one.
    """

    def __init__(self, enabled: bool = True, cam: bool = False, n_boot: int = 2000, seed: int = 0, task_name: str = "train"):
        self.enabled, self.cam, self.n_boot, self.seed = enabled, cam, n_boot, seed
        self.task_name = task_name  # other apps sharing conf/hydra (visualize.py) have no training runs to report
        self.failures: dict[str, str] = {}

    def _wanted(self, config: DictConfig) -> bool:
        return self.enabled and config.get("task_name") == self.task_name

    def _write(self, sweep_dir: str) -> None:
        from covidnet.report import write_report  # imported late: a sweep without failures pays nothing before it ends

        try:
            path = write_report(sweep_dir, cam=self.cam, n_boot=self.n_boot, seed=self.seed, failures=self.failures)
            log.info(f"Sweep report: {path}")
        except Exception as err:  # noqa: BLE001 - see the class docstring
            log.error(f"Could not write the sweep report for {sweep_dir} ({type(err).__name__}: {err}); "
                      f"run `python -m covidnet.report {sweep_dir}` to retry.")

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not self._wanted(config) or config.hydra.mode != RunMode.MULTIRUN:
            return
        if job_return.status == JobStatus.FAILED:
            err = job_return._return_value
            self.failures[str(Path(config.hydra.runtime.output_dir).resolve())] = f"{type(err).__name__}: {err}"[:2000]
        if self.failures:
            self._write(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._wanted(config):
            self._write(config.hydra.sweep.dir)
