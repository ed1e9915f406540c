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

from covidnet.checkpoint import load_checkpoint
from covidnet.data import CovidCTDataModule
from covidnet.dataset import NON_COVID, split_file
from covidnet.predict import predict_probs
from synthetic import make_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """`python train.py trainer=ddp trainer.accelerator=cpu trainer.devices=2` on a test split of odd size.

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
        sys.executable, str(ROOT / "train.py"), "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        f"data.root={data}", f"paths.log_dir={logs}", "data.image_size=32", "data.batch_size=4", "trainer.max_epochs=1",
        "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false", "++callbacks.cam=null",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1"}  # one thread per process
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return logs / "train" / "runs", proc.stdout + proc.stderr


@pytest.mark.slow
def test_both_processes_share_one_run_directory(ddp_run):
    runs, output = ddp_run
    assert "GLOBAL_RANK: 1" in output and "gloo" in output  # really two processes
    dirs = list(runs.iterdir())
    assert len(dirs) == 1, dirs  # the relaunched rank 1 used the same Hydra run dir
    run = dirs[0]
    assert (run / "metrics.json").is_file()
    assert not list(run.glob(".*.tmp"))
    assert len(list((run / "checkpoints").glob("epoch=*.ckpt"))) == 1
    assert (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_test_metrics_equal_a_single_process_evaluation(ddp_run):
    runs, _ = ddp_run
    run = next(runs.iterdir())
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
