"""Hydra callback: a multirun names every job that failed, in a file and at exit.

Hydra's basic sweeper runs every job of a sweep even when one raises, then re-raises the first job's
error and exits with status 1 without calling ``on_multirun_end``. Its message shows one traceback; which
jobs failed is otherwise left to the reader of each job's log. This callback appends each failed job to
``<sweep dir>/failed_jobs.jsonl`` as it ends, and prints a summary naming them when the process exits.
Registered under ``hydra.callbacks.failed_jobs`` in conf/hydra/default.yaml.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger(__name__)
FAILED_JOBS_FILE = "failed_jobs.jsonl"


def read_failed_jobs(sweep_dir: str | Path) -> list[dict]:
    """Failed jobs recorded for a sweep (empty when none failed)."""
    path = Path(sweep_dir) / FAILED_JOBS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class FailedJobsReport(Callback):
    def __init__(self) -> None:
        self.sweep_dir: Path | None = None
        self.jobs_ended = 0
        self._registered = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)
        if not self._registered:
            atexit.register(self.summarise)
            self._registered = True

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        self.jobs_ended += 1
        if job_return.status != JobStatus.FAILED:
            return
        err = job_return._return_value  # .return_value would re-raise it
        name = config.hydra.job.override_dirname or f"job {config.hydra.job.num}"
        record = {
            "job": name,
            "num": int(config.hydra.job.num),
            "output_dir": str(config.hydra.runtime.output_dir),
            "error": f"{type(err).__name__}: {err}"[:2000],
        }
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # one line per write, opened for appending: jobs of a parallel launcher may end at the same time
        fd = os.open(sweep_dir / FAILED_JOBS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)
        log.error(f"Job {name} FAILED ({record['error'][:300]}); the sweep goes on with the other jobs.")

    def summarise(self) -> None:
        """At exit: name the failed jobs (Hydra's own message shows only the first traceback)."""
        if self.sweep_dir is None:
            return
        failed = read_failed_jobs(self.sweep_dir)
        if failed:
            names = "\n".join(f"  {f['job']}: {f['error'][:200]}" for f in failed)
            print(
                f"\n{len(failed)} job(s) of the sweep in {self.sweep_dir} FAILED:\n{names}\n"
                f"Details: {self.sweep_dir / FAILED_JOBS_FILE} and each job's log. "
                f"Rerun only those jobs with the same overrides.",
                file=sys.stderr,
            )
