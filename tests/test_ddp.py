"""DDP proven on CPU: two processes with gloo under Hydra, metrics reduced across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_f1_score,
    binary_precision,
    binary_recall,
    binary_specificity,
)

from covidnet.trained.checkpoint import load_checkpoint
from covidnet.data.datamodule import CovidCTDataModule
from covidnet.images.covid_ct_layout import NON_COVID, split_file
from covidnet.models.predict import predict_probs
from synthetic import make_dataset

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("resnet18", "efficientnet_lite0")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """`python train.py -m seed=0,1 model.arch=resnet18,efficientnet_lite0 trainer=ddp trainer.accelerator=cpu
    trainer.devices=2`: four DDP jobs, both kinds of architecture.

    A multirun, because it is where DDP under Hydra breaks: Lightning relaunches rank 1 with the whole
    command line, and the second job inherits the first job's process group and rank variables.
    7 test images cannot be split evenly over two processes: a sampler that pads with repeats would
    count one image twice and the test metrics would differ from a single-process evaluation.
    """
    tmp = tmp_path_factory.mktemp("ddp")
    data = tmp / "covid-ct"
    make_dataset(data, {"train": 8, "val": 4, "test": 4}, seed=1)
    test_list = split_file(data, NON_COVID, "test")
    test_list.write_text("\n".join(test_list.read_text().split()[:-1]) + "\n")  # 4 COVID + 3 non-COVID
    logs = tmp / "logs"
    cmd = [
        sys.executable, str(ROOT / "train.py"), "-m", "seed=0,1", f"model.arch={','.join(ARCHS)}", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        f"data.root={data}", f"paths.log_dir={logs}", "data.image_size=32", "data.batch_size=4", "trainer.max_epochs=1",
        "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false", "++callbacks.cam=null",
        # fp32: the test metrics are compared exactly with a single-process fp32 evaluation (precision: test_hardware.py)
        "trainer.precision=32-true", "channels_last=false",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1"}  # one thread per process
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    sweeps = list((logs / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps  # rank 1 did not start a sweep of its own
    return sweeps[0], proc.stdout + proc.stderr


def job_dir(sweep: Path, seed: int, arch: str) -> Path:
    """The job directory whose name has seed=<seed> and model.arch=<arch> among its overrides."""
    (job,) = [p for p in sweep.iterdir() if p.is_dir() and {f"seed={seed}", f"model.arch={arch}"} <= set(p.name.split(","))]
    return job


@pytest.mark.slow
def test_each_job_runs_on_two_processes_in_its_own_directory(ddp_run):
    sweep, output = ddp_run
    assert output.count("GLOBAL_RANK: 1") == 4 and "gloo" in output  # two processes per job
    assert len([p for p in sweep.iterdir() if p.is_dir()]) == 4
    for seed, arch in ((s, a) for s in (0, 1) for a in ARCHS):
        run = job_dir(sweep, seed, arch)
        assert (run / "train_ddp_process_1.log").is_file()  # rank 1 ran in this job's directory
        assert json.loads((run / "metrics.json").read_text())["seed"] == seed
        assert json.loads((run / "metrics.json").read_text())["arch"] == arch
        assert not list(run.glob(".*.tmp"))
        assert len(list((run / "checkpoints").glob("epoch=*.ckpt"))) == 1
        assert (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("seed", [0, 1])
def test_test_metrics_equal_a_single_process_evaluation(ddp_run, seed, arch):
    sweep, _ = ddp_run
    run = job_dir(sweep, seed, arch)
    metrics = json.loads((run / "metrics.json").read_text())
    model, dm_hparams = load_checkpoint(metrics["best_checkpoint"])
    dm = CovidCTDataModule(**dm_hparams)
    dm.setup("test")
    assert len(dm.datasets["test"]) == 7
    probs, labels = predict_probs(model, dm.test_dataloader())
    p, y = torch.from_numpy(probs), torch.from_numpy(labels)
    expected = {
        "test/acc": binary_accuracy(p, y),
        "test/auroc": binary_auroc(p, y),
        "test/f1": binary_f1_score(p, y),
        "test/sensitivity": binary_recall(p, y),
        "test/specificity": binary_specificity(p, y),
        "test/precision": binary_precision(p, y),
    }
    for name, value in expected.items():
        assert metrics["test"][name] == pytest.approx(float(value), abs=1e-6), name
    # every test image is in predictions_test.csv once, written by rank 0 alone
    rows = (run / "predictions_test.csv").read_text().splitlines()
    assert len(rows) == 1 + 7 and len(set(rows)) == len(rows)
