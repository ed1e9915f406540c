"""Configs, `train(cfg)` in process, resume, checkpoint reloading, and `python train.py -m init=scratch,imagenet`."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from hydra.utils import instantiate
from torchvision import models

from train_configs import CONF, TINY, compose_cfg, tiny_cfg

from covidnet.trained.checkpoint import load_checkpoint
from covidnet.data.datamodule import CovidCTDataModule
from covidnet.models.predict import predict_probs
from covidnet.apps.train import train

ROOT = Path(__file__).resolve().parents[1]
BEST_NAME = re.compile(r"epoch=(\d{3})-val_auroc=(\d\.\d{4})\.ckpt")


class EpochRecorder(L.Callback):
    """Records which epochs a fit actually trains (for the resume test)."""

    epochs: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module):
        EpochRecorder.epochs.append(trainer.current_epoch)


# --- configs --------------------------------------------------------------------------------------------


def test_config_groups_exist_with_the_choices_tools_use():
    for group, options in {
        "data": [],
        "model": [],
        "init": ["scratch", "imagenet"],
        "trainer": ["default", "cpu", "gpu", "ddp"],
        "callbacks": ["default", "none"],
        "logger": ["tensorboard"],
        "paths": ["default"],
        "hydra": ["default"],
        "experiment": ["smoke"],
    }.items():
        assert (CONF / group).is_dir(), group
        for option in options:
            assert (CONF / group / f"{option}.yaml").is_file(), f"{group}/{option}"


def test_config_keys_that_tools_rely_on(tmp_path, monkeypatch):
    monkeypatch.delenv("COVIDNET_DATA", raising=False)
    cfg = compose_cfg(["paths.output_dir=" + str(tmp_path)])
    for key in ("data.root", "data.image_size", "data.batch_size", "data.num_workers", "data.fraction", "model.arch"):
        node, leaf = key.split(".")
        assert leaf in cfg[node], key
    assert "weights_path" in cfg.model and cfg.model.weights_path is None
    assert cfg.model.init == "scratch" and cfg.seed == 0 and "ckpt_path" in cfg and cfg.ckpt_path is None
    assert cfg.data.root == "data/covid-ct" and cfg.data.image_size == 224 and cfg.data.fraction == 1.0
    assert cfg.model.arch == "resnet18" and cfg.trainer._target_ == "lightning.Trainer"
    # trainer.* takes any lightning.Trainer argument, new ones with +
    cfg = compose_cfg(["init=imagenet", "seed=3", "trainer.max_epochs=2", "+trainer.gradient_clip_val=1.0", "ckpt_path=x.ckpt"])
    assert cfg.model.init == "imagenet" and cfg.data.normalization == "imagenet"
    assert cfg.trainer.max_epochs == 2 and cfg.trainer.gradient_clip_val == 1.0 and cfg.ckpt_path == "x.ckpt"
    assert cfg.data.seed == 3
    # the ddp trainer runs on CPUs too
    ddp = compose_cfg(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"])
    assert ddp.trainer.strategy == "ddp" and ddp.trainer.devices == 2


def test_data_root_env_variable_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("COVIDNET_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    dm = instantiate(compose_cfg([]).data)
    assert Path(dm.hparams.root) == tmp_path / "data" / "covid-ct"  # the default, under the launch directory
    dm = instantiate(compose_cfg(["data.root=../elsewhere/ct"]).data)
    assert Path(dm.hparams.root) == tmp_path.parent / "elsewhere" / "ct"
    monkeypatch.setenv("COVIDNET_DATA", "/srv/covid-ct")
    assert Path(instantiate(compose_cfg([]).data).hparams.root) == Path("/srv/covid-ct")


# --- train(cfg) in process --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("run")
    metrics = train(tiny_cfg(synthetic_root, out))
    return metrics, out


def test_train_returns_and_writes_metrics(trained):
    metrics, out = trained
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics, default=str))
    assert metrics["init"] == "scratch" and metrics["arch"] == "resnet18" and metrics["epochs_trained"] == 1
    assert metrics["best_val_metric"] == "val/auroc" and metrics["best_epoch"] == 0
    assert 0 <= metrics["best_val_score"] <= 1
    names = {"loss", "acc", "auroc", "f1", "sensitivity", "specificity", "precision"}
    assert set(metrics["test"]) == {f"test/{n}" for n in names}
    assert all(0 <= v <= 1 for k, v in metrics["test"].items() if k != "test/loss")
    assert metrics["wall_seconds"] >= metrics["fit_seconds"] > 0
    assert len(metrics["epoch_seconds"]) == 1 and 0 < metrics["epoch_seconds"][0] <= metrics["fit_seconds"]


def test_best_checkpoint_name_and_place(trained):
    metrics, out = trained
    best = Path(metrics["best_checkpoint"])
    assert best.parent == out / "checkpoints" and best.is_file()
    match = BEST_NAME.fullmatch(best.name)  # `val/auroc` in the filename template makes no sub-folder
    assert match, best.name
    assert int(match.group(1)) == metrics["best_epoch"]
    assert float(match.group(2)) == pytest.approx(metrics["best_val_score"], abs=1e-4)
    assert Path(metrics["last_checkpoint"]) == out / "checkpoints" / "last.ckpt"
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert not (out / "checkpoints" / "epoch=000-val").exists()


def test_predictions_match_the_best_checkpoint(trained, synthetic_root):
    metrics, out = trained
    with open(out / "predictions_test.csv") as f:
        rows = list(csv.DictReader(f))
    model, dm_hparams = load_checkpoint(metrics["best_checkpoint"])
    dm = CovidCTDataModule(**dm_hparams)
    dm.setup("test")
    assert [r["file"] for r in rows] == dm.split_names("test")
    # under the run's precision (trainer.precision=auto is bf16-mixed on a CPU with native bf16)
    bf16 = metrics["hardware"]["precision"] == "bf16-mixed"
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        probs, labels = predict_probs(model, dm.test_dataloader())
    assert [int(r["label"]) for r in rows] == labels.tolist()
    assert [float(r["prob_covid"]) for r in rows] == pytest.approx(probs.tolist(), abs=1e-5)
    # test/acc in metrics.json is that of the best checkpoint
    assert metrics["test"]["test/acc"] == pytest.approx(float(((probs >= 0.5) == labels).mean()), abs=1e-6)


def test_tensorboard_gets_metrics_and_the_full_config(trained, synthetic_root):
    _, out = trained
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for event in events:
        acc = EventAccumulator(str(event))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/loss", "val/auroc", "val/sensitivity", "test/auroc", "test/specificity"} <= tags
    hparams = yaml.safe_load((out / "tensorboard" / "hparams.yaml").read_text())
    assert hparams["data"]["root"] == str(synthetic_root)
    assert hparams["model"]["init"] == "scratch" and hparams["trainer"]["max_epochs"] == 1 and hparams["seed"] == 0
    # trainer.precision=auto and channels_last=auto are logged as resolved for this machine
    metrics = json.loads((out / "metrics.json").read_text())
    assert hparams["trainer"]["precision"] == metrics["hardware"]["precision"] in ("bf16-mixed", "32-true")
    assert hparams["channels_last"] is metrics["hardware"]["channels_last"]
    assert hparams["threads"] == metrics["hardware"]["threads"] >= 1


def test_explicit_fp32_and_threads_are_used_and_recorded(synthetic_root, tmp_path):
    threads = torch.get_num_threads()
    try:
        metrics = train(tiny_cfg(synthetic_root, tmp_path, "trainer.precision=32-true", "channels_last=false", "threads=1", "test=false"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert metrics["hardware"]["precision"] == "32-true" and metrics["hardware"]["channels_last"] is False
    assert metrics["hardware"]["threads"] == 1 and "explicitly" in metrics["hardware"]["reason"]
    hparams = yaml.safe_load((tmp_path / "tensorboard" / "hparams.yaml").read_text())
    assert (hparams["trainer"]["precision"], hparams["channels_last"], hparams["threads"]) == ("32-true", False, 1)


def test_a_finished_run_directory_is_never_overwritten(trained, synthetic_root):
    metrics, out = trained
    before = (out / "metrics.json").read_text()
    with pytest.raises(RuntimeError, match="already holds a run"):
        train(tiny_cfg(synthetic_root, out))
    assert (out / "metrics.json").read_text() == before


def test_resume_continues_from_the_checkpoint(trained, synthetic_root, tmp_path):
    _, first = trained
    out = tmp_path / "resumed"
    shutil.copytree(first, out)
    EpochRecorder.epochs = []
    cfg = tiny_cfg(
        synthetic_root, out, "ckpt_path=" + str(out / "checkpoints" / "last.ckpt"), "trainer.max_epochs=2", "test=false",
        "+callbacks.epochs._target_=test_train.EpochRecorder",
    )
    metrics = train(cfg)
    assert EpochRecorder.epochs == [1]  # epoch 0 came from the checkpoint, only epoch 1 was trained
    assert metrics["epochs_trained"] == 2 and len(metrics["epoch_seconds"]) == 1
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    first_last = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == first_last["epoch"] + 1 and last["global_step"] == 2 * first_last["global_step"] > 0
    assert json.loads((out / "metrics.json").read_text())["epochs_trained"] == 2


def test_load_checkpoint_rebuilds_the_model_alone(trained):
    metrics, _ = trained
    best = metrics["best_checkpoint"]
    model = load_checkpoint(best)[0]
    state = torch.load(best, weights_only=True)["state_dict"]
    assert model.hparams.arch == "resnet18" and model.net.fc.out_features == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


# --- python train.py -m init=scratch,imagenet -----------------------------------------------------------


def run_train(args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc: subprocess.Popen, timeout: float = 420) -> str:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="module")
def sweeps(synthetic_root, tmp_path_factory):
    """Two sweeps started at the same moment: `-m init=scratch,imagenet` and a one-job sweep (with a
    config-group override, whose "/" must not nest the job a folder deeper).

    Launched from the dataset's parent with a relative data.root; the ImageNet arm reads a stand-in
    weights file from a temporary torch hub cache (no network).
    """
    tmp = tmp_path_factory.mktemp("e2e")
    torch_home = tmp / "torch_home"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(11)
    stand_in = models.resnet18(weights=None).state_dict()
    torch.save(stand_in, torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    # one thread each: the two sweeps run side by side on two cores
    env = {**os.environ, "TORCH_HOME": str(torch_home), "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1"}
    env.pop("COVIDNET_DATA", None)
    logs = tmp / "logs"
    # readable job directories: the tiny settings do not name the jobs, like data.root does not
    exclude = yaml.safe_load((CONF / "hydra" / "default.yaml").read_text())["job"]["config"]["override_dirname"]["exclude_keys"]
    exclude += [o.split("=")[0].lstrip("+") for o in TINY]
    common = ["data.root=covid-ct", f"paths.log_dir={logs}", *TINY, f"hydra.job.config.override_dirname.exclude_keys=[{','.join(exclude)}]"]
    both = run_train(["-m", "init=scratch,imagenet", *common], synthetic_root.parent, env)
    one = run_train(["-m", "init=scratch", "test=false", "data/source_aug=none", *common], synthetic_root.parent, env)
    finish(one)
    finish(both)
    return logs / "train" / "multiruns", stand_in


def sweep_dirs(multiruns: Path) -> dict[frozenset, Path]:
    """Sweep directory by the set of job directory names in it."""
    return {frozenset(p.name for p in d.iterdir() if p.is_dir() and "=" in p.name): d for d in multiruns.iterdir()}


@pytest.mark.slow
def test_two_sweeps_never_share_a_directory(sweeps):
    multiruns, _ = sweeps
    dirs = sweep_dirs(multiruns)
    assert len(list(multiruns.iterdir())) == 2
    assert set(dirs) == {frozenset({"init=scratch", "init=imagenet"}), frozenset({"data.source_aug=none,init=scratch,test=False"})}
    for sweep in dirs.values():
        for job in sweep.iterdir():
            if job.is_dir() and "=" in job.name:
                assert (job / ".hydra" / "overrides.yaml").is_file() and list(job.glob("checkpoints/*.ckpt"))


@pytest.mark.slow
def test_multirun_jobs_produce_checkpoint_tensorboard_and_metrics(sweeps, synthetic_root):
    multiruns, _ = sweeps
    sweep = sweep_dirs(multiruns)[frozenset({"init=scratch", "init=imagenet"})]
    for init in ("scratch", "imagenet"):
        job = sweep / f"init={init}"
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["init"] == init and set(metrics["test"]) >= {"test/auroc", "test/acc", "test/f1"}
        best = Path(metrics["best_checkpoint"])
        assert best.parent == job / "checkpoints" and BEST_NAME.fullmatch(best.name)
        # all jobs log under the sweep directory: `tensorboard --logdir <sweep dir>` compares them
        assert list((job / "tensorboard").glob("events.out.tfevents.*"))
        # the relative data.root was resolved against the launch directory, not the job directory
        ckpt = torch.load(best, weights_only=True)
        assert ckpt["datamodule_hyper_parameters"]["root"] == str(synthetic_root)
        assert ckpt["hyper_parameters"]["init"] == init


@pytest.mark.slow
def test_imagenet_job_started_from_the_stand_in_weights(sweeps, tmp_path, monkeypatch):
    multiruns, stand_in = sweeps
    sweep = sweep_dirs(multiruns)[frozenset({"init=scratch", "init=imagenet"})]
    best = json.loads((sweep / "init=imagenet" / "metrics.json").read_text())["best_checkpoint"]
    # the checkpoint alone rebuilds the model: no ImageNet weights needed (empty hub cache here)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    model = load_checkpoint(best)[0]
    assert model.hparams.init == "imagenet" and model.net.fc.out_features == 1
    state = torch.load(best, weights_only=True)["state_dict"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    # one epoch at lr 1e-4 moves the backbone only a little away from the stand-in weights
    conv = model.net.conv1.weight
    assert torch.allclose(conv, stand_in["conv1.weight"], atol=0.05)
    scratch_best = json.loads((sweep / "init=scratch" / "metrics.json").read_text())["best_checkpoint"]
    scratch_conv = torch.load(scratch_best, weights_only=True)["state_dict"]["net.conv1.weight"]
    assert not torch.allclose(scratch_conv, stand_in["conv1.weight"], atol=0.05)
