"""Sweeps through submitit (the `cluster` extra): conf/hydra/launcher/slurm.yaml composes to the SLURM launcher, and
a real two-job sweep of train.py runs through submitit's local executor, each job in a process of its own, as on a
cluster: both runs finish with metrics.json, each job owned its run directory (covidnet/rundirs/run_lock.py) and let it go,
and the sweep report, written by the launching process when the jobs have ended, covers both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from train_configs import CONF, TINY

from covidnet.rundirs import run_lock

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


def test_the_slurm_launcher_config_has_documented_defaults_and_leaves_the_partition_to_the_user():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition is None and launcher.timeout_min == 240
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (1, 1, 1)


@pytest.mark.slow
def test_a_two_job_sweep_runs_through_submitit_in_processes_of_its_own(synthetic_root, tmp_path):
    sweep = tmp_path / "sweep"
    exclude = yaml.safe_load((CONF / "hydra" / "default.yaml").read_text())["job"]["config"]["override_dirname"]["exclude_keys"]
    exclude += [o.split("=")[0].lstrip("+") for o in TINY]
    args = ["-m", "hydra/launcher=slurm_local", "seed=0,1", f"data.root={synthetic_root}", f"hydra.sweep.dir={sweep}", *TINY,
            f"hydra.job.config.override_dirname.exclude_keys=[{','.join(exclude)}]", "+hydra.callbacks.sweep_report.n_boot=100"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for seed in (0, 1):
        job = sweep / f"seed={seed}"
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["seed"] == seed and "test/auroc" in metrics["test"]
        assert not (job / run_lock.OWNER_FILE).exists()  # the job's process owned its run directory, then let it go
    # each job ran in a submitit process of its own (its own log folder), not in the launching one
    assert len({p.parent for p in (sweep / ".submitit").rglob("*_log.out")}) == 2
    assert not (sweep / run_lock.OWNER_FILE).exists()  # the launching process let the sweep directory go
    with run_lock.owning(sweep, "sweep directory"):  # and its lock is free
        pass
    report = (sweep / "report.md").read_text()  # written by the launching process's callback once both ended
    rows = list(csv_rows(sweep / "summary.csv"))
    assert report and rows and not (sweep / "failed_jobs.jsonl").exists()


def csv_rows(path: Path):
    import csv

    with open(path, newline="") as f:
        yield from csv.DictReader(f)
