"""A resume continues the run it resumes; a run that trained nothing publishes nothing false; one checkpoint check.

The kill-and-resume helpers are those of test_faults.py (a real SIGKILL mid-epoch, then ``ckpt_path=last``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from covidnet.trained.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from covidnet.apps.cli import EXIT_USER_ERROR
from covidnet.apps.train import train
from synthetic import make_dataset

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TINY = [
    "experiment=smoke",
    "data.image_size=32",
    "data.batch_size=4",
    "trainer.max_epochs=2",
    "callbacks.step_checkpoint.every_n_train_steps=2",
    "callbacks.step_checkpoint.train_time_interval=null",
    "+trainer.enable_progress_bar=false",
    "+trainer.num_sanity_val_steps=0",
    "callbacks.cam=null",
]
KILL_STEP = 7  # epoch 1, batch 3 of 4


def run_py(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "covid-ct"
    make_dataset(root, {"train": 8, "val": 2, "test": 2}, seed=3)
    return root


def assert_one_clear_message(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in expected:
        assert text in result.stderr, result.stderr[-3000:]


# --- resume with other settings: a real kill, then resumes ---------------------------------------------
@pytest.mark.slow
def test_resume_with_other_settings_is_refused_and_the_record_kept(tiny_root, tmp_path):
    run_dir = tmp_path / "run"
    common = [*TINY, f"data.root={tiny_root}", f"hydra.run.dir={run_dir}"]
    killed = run_py("train.py", *common, "+callbacks.killer._target_=fault_helpers.KillAtStep", f"+callbacks.killer.step={KILL_STEP}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    record = {name: (run_dir / ".hydra" / name).read_text() for name in ("config.yaml", "overrides.yaml")}

    # two settings left off / changed: refused, naming each key with both values, before any training
    mismatch = run_py("train.py", *[a for a in common if a != "data.batch_size=4"], "data.batch_size=8", "data.image_size=64", "ckpt_path=last")
    assert_one_clear_message(mismatch, "Refusing to resume", "data.batch_size: 4 in the run, 8 now", "data.image_size: 32 in the run, 64 now",
                             "resume_allow=[data.batch_size,data.image_size]")
    assert not (run_dir / "metrics.json").exists()
    # the original record is intact; the attempt's overrides are kept beside it
    assert {name: (run_dir / ".hydra" / name).read_text() for name in record} == record
    attempts = sorted((run_dir / ".hydra").glob("resume-*/overrides.yaml"))
    assert len(attempts) == 1 and "data.batch_size=8" in attempts[0].read_text()

    # an accepted change is fine, and recorded: two more epochs' worth of schedule
    accepted = run_py("train.py", *[a for a in common if a != "trainer.max_epochs=2"], "trainer.max_epochs=3", "ckpt_path=last",
                      "resume_allow=[trainer.max_epochs]")
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 3 and metrics["trained"] is True
    # T_max=${trainer.max_epochs} follows the accepted key
    assert metrics["resumed_with_changes"] == {"model.scheduler.T_max": {"run": 2, "now": 3}, "trainer.max_epochs": {"run": 2, "now": 3}}
    assert len(list((run_dir / ".hydra").glob("resume-*/accepted_changes.yaml"))) == 1
    assert {name: (run_dir / ".hydra" / name).read_text() for name in record} == record

    # resuming the finished run again (a resumed sweep) keeps its results, fit_seconds included
    before = (run_dir / "metrics.json").read_bytes()
    again = run_py("train.py", *[a for a in common if a != "trainer.max_epochs=2"], "trainer.max_epochs=3", "ckpt_path=last",
                   "resume_allow=[trainer.max_epochs]")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished" in again.stdout + again.stderr
    assert (run_dir / "metrics.json").read_bytes() == before


# --- a run that trained nothing -------------------------------------------------------------------------
def test_fast_dev_run_writes_no_test_result(tiny_root, tmp_path):
    cfg = compose_cfg([*TINY, f"data.root={tiny_root}", f"paths.output_dir={tmp_path}", "+trainer.fast_dev_run=true"])
    metrics = train(cfg)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == metrics
    assert metrics["trained"] is False and metrics["best_checkpoint"] is None
    assert metrics["test"] is None and "no test result" in metrics["not_tested"]
    assert metrics["last_checkpoint"] is None or Path(metrics["last_checkpoint"]).is_file()  # never a file that does not exist
    assert not (tmp_path / "predictions_test.csv").exists()


# --- one checkpoint check for every entry point ---------------------------------------------------------
@pytest.fixture
def random_bytes(tmp_path) -> Path:
    path = tmp_path / "random.ckpt"
    path.write_bytes(os.urandom(4096))
    return path


def test_random_bytes_in_process_give_the_one_message(random_bytes):
    for load in (read_checkpoint, load_checkpoint):  # load_checkpoint: visualize, evaluation, the report's CAM step
        with pytest.raises(CheckpointError, match=r"random.ckpt is not a readable checkpoint: .*; it may be truncated or corrupt\.$") as err:
            load(random_bytes)
        assert "False" not in str(err.value)


@pytest.mark.parametrize("content", [b"not a checkpoint", b"PK\x03\x04garbage"])
def test_no_message_suggests_weights_only_false(tmp_path, content):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert "weights_only" not in str(err.value) and "will likely succeed" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize(("script", "option"), [("train.py", "ckpt_path"), ("visualize.py", "ckpt"), ("evaluate.py", "ckpt")])
def test_random_bytes_through_each_entry_point(tiny_root, tmp_path, random_bytes, script, option):
    extra = {"train.py": [*TINY, f"data.root={tiny_root}"], "visualize.py": [f"data.root={tiny_root}"],
             "evaluate.py": ["eval=[covid_ct_test]"]}[script]
    result = run_py(script, *extra, f"{option}={random_bytes}", f"hydra.run.dir={tmp_path / 'out'}")
    assert_one_clear_message(result, f"{random_bytes} is not a readable checkpoint", "it may be truncated or corrupt")
    assert "weights_only" not in result.stderr + result.stdout


def test_resume_from_weights_of_another_architecture_is_summarised(tiny_root, tmp_path):
    """A resume checkpoint whose tensors do not fit: counts and a few names, not PyTorch's list of hundreds."""
    from covidnet.models.model import CovidClassifier

    other = CovidClassifier(arch="resnet50")
    path = tmp_path / "r50.ckpt"
    cfg = compose_cfg([*TINY, f"data.root={tiny_root}", f"paths.output_dir={tmp_path / 'out'}", f"ckpt_path={path}"])
    # the run's settings (so the resume gets past the settings check), except: claims resnet18, holds resnet50 weights
    hparams = {**dict(other.hparams), "arch": "resnet18", "calibrate_bn": cfg.model.calibrate_bn}
    torch.save({"state_dict": other.state_dict(), "hyper_parameters": hparams,
                "datamodule_hyper_parameters": {"image_size": 32}}, path)
    with pytest.raises(CheckpointError) as err:
        train(cfg)
    text = str(err.value)
    assert "do not fit" in text and "unexpected (e.g." in text and "of another shape (e.g." in text
    assert len(text) < 1200
