"""covidnet.rundirs.runs: what a run leaves on disk, read back through one type (RunDir, SweepDir)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from covidnet.core.configs import config_dir
from covidnet.rundirs.run_files import EVAL_COLUMNS, read_eval, write_eval
from covidnet.rundirs.runs import INTERRUPTED, NOT_TRAINED, TRAINED, FAILED, RunDir, SweepDir, job_name_of, not_job_keys
from covidnet.images.sources.base import Record


def make_run(path: Path, overrides: list[str], best: bool = True, epoch: int = 2) -> RunDir:
    run = RunDir(path)
    run.checkpoint_dir.mkdir(parents=True)
    run.hydra_dir.mkdir()
    OmegaConf.save(OmegaConf.create(overrides), run.hydra_dir / "overrides.yaml")
    best_path = run.checkpoint_dir / f"epoch={epoch:03d}-val_auroc=0.9000.ckpt"
    torch.save({"epoch": epoch, "state_dict": {"w": torch.zeros(3)}}, best_path)
    torch.save({"epoch": epoch + 1}, run.checkpoint_dir / "last.ckpt")
    run.write_metrics({**RunDir.metrics_record(best_path.resolve() if best else None, run.checkpoint_dir / "last.ckpt"), "seed": 0})
    run.write_predictions(["a.png", "b.png"], [1, 0], [0.9, 0.25])
    return run


def test_a_moved_run_reads_its_own_checkpoint_and_files(tmp_path):
    run = make_run(tmp_path / "sweep" / "init=scratch", ["init=scratch", "data.root=/data"])
    moved = RunDir(Path(shutil.move(str(tmp_path / "sweep"), tmp_path / "elsewhere")) / "init=scratch")
    # metrics.json still records the original absolute path, which no longer exists
    assert not Path(moved.read_metrics()["best_checkpoint"]).exists()
    assert moved.best_checkpoint() == moved.checkpoint_dir / "epoch=002-val_auroc=0.9000.ckpt"
    assert moved.last_checkpoint() == moved.checkpoint_dir / "last.ckpt"
    assert moved.read_predictions() == {("a.png", 1): 0.9, ("b.png", 0): 0.25}
    assert RunDir.checkpoint_epoch(moved.best_checkpoint()) == 2  # read from the file, not its name
    assert run.path != moved.path


def test_a_copy_never_reads_the_original(tmp_path):
    make_run(tmp_path / "a" / "job", ["seed=1"])
    copy = RunDir(shutil.copytree(tmp_path / "a", tmp_path / "b") / "job")
    assert copy.best_checkpoint().is_relative_to(tmp_path / "b")
    shutil.rmtree(copy.checkpoint_dir)
    assert copy.best_checkpoint() is None  # its own file is gone: never falls back to the original's


def test_states(tmp_path):
    assert make_run(tmp_path / "done", ["seed=0"]).state() == TRAINED
    assert make_run(tmp_path / "untrained", ["seed=0"], best=False).state() == NOT_TRAINED
    explicit = make_run(tmp_path / "explicit", ["seed=0"])
    explicit.write_metrics({"best_checkpoint": "x.ckpt", "trained": False})
    assert explicit.state() == NOT_TRAINED
    started = RunDir(tmp_path / "killed")
    (started.hydra_dir).mkdir(parents=True)
    assert started.state() == INTERRUPTED and started.state(failed=True) == FAILED
    # metrics.json written before the best checkpoint was recorded counts as trained (older runs, hand-made jobs)
    old = RunDir(tmp_path / "old")
    old.write_metrics({"best_epoch": 1})
    assert old.state() == TRAINED


def test_job_name_comes_from_the_hydra_record(tmp_path):
    run = make_run(tmp_path / "whatever-the-folder-is-called", ["seed=1", "init=imagenet", "data.root=/x", "++callbacks.cam=null", "trainer.devices=2"])
    assert run.job_name() == "init=imagenet,seed=1"
    OmegaConf.save({"hydra": {"job": {"override_dirname": "as,hydra=set_it"}}}, run.hydra_dir / "hydra.yaml")
    assert run.job_name() == "as,hydra=set_it"
    assert RunDir(tmp_path / "no-record").job_name() == ""


def test_keys_that_do_not_name_a_job_are_hydras_exclude_keys(tmp_path):
    hydra_cfg = OmegaConf.load(config_dir() / "hydra" / "default.yaml")
    assert not_job_keys() == list(hydra_cfg.job.config.override_dirname.exclude_keys)
    assert job_name_of(["data.root=/a", "init=ct", "ckpt_path=last"], not_job_keys()) == "init=ct"


def test_eval_sets(tmp_path):
    run = make_run(tmp_path / "job", ["seed=0"])
    assert run.eval_sets() == []
    records = [Record("p1/s1.dcm", Path("p1/s1.dcm"), 1, "COVID", "p1", 0), Record("p2/s1.dcm", Path("p2/s1.dcm"), 0, "normal", "p2", 0)]
    out = write_eval(run.eval_dir("covid-ct-md"), records, [0.8, 0.1], {"auroc": 0.7})  # the writer evaluate.py uses
    assert out == run.path / "eval" / "covid-ct-md" and run.eval_dir("covid-ct-md") == out
    (run.path / "eval" / "half-written").mkdir()  # no metrics.json: not listed
    assert run.eval_sets() == ["covid-ct-md"]
    metrics, rows = run.read_eval("covid-ct-md")
    preds = {(r["path"], int(r["label"])): float(r["prob_covid"]) for r in rows}
    assert metrics == {"auroc": 0.7} and preds == {("p1/s1.dcm", 1): 0.8, ("p2/s1.dcm", 0): 0.1}
    assert [r["patient"] for r in rows] == ["p1", "p2"] and list(rows[0]) == list(EVAL_COLUMNS)
    with pytest.raises(ValueError, match="names a folder"):
        run.eval_dir("../escape")


def test_an_eval_result_cut_short_is_refused(tmp_path):
    out = write_eval(tmp_path / "eval" / "s", [Record("a.png", Path("a.png"), 1, "COVID")], [0.5], {"n_images": 1})
    text = (out / "predictions.csv").read_text()
    (out / "predictions.csv").write_text(text[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_eval(out)


def test_failed_jobs_record_survives_a_move(tmp_path):
    sweep = SweepDir(tmp_path / "sweep")
    job = RunDir(sweep.path / "init=ct")
    job.hydra_dir.mkdir(parents=True)
    sweep.record_failure("init=ct", 0, job.path, "ValueError: bad")
    sweep.record_failure("init=x", 1, sweep.path / "init=x", "E" * 5000)
    records = sweep.failed_jobs()
    assert [r["job"] for r in records] == ["init=ct", "init=x"] and len(records[1]["error"]) == 2000
    moved = SweepDir(shutil.copytree(sweep.path, tmp_path / "moved"))
    assert SweepDir.failure_of(RunDir(moved.path / "init=ct"), moved.failures()) == "ValueError: bad"
    assert [r.path.name for r in moved.job_dirs()] == ["init=ct"]
    assert json.loads(moved.failed_jobs_path.read_text().splitlines()[0])["num"] == 0
