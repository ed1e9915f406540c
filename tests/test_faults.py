"""Interruptions: hard kills while training, saving and downloading; a failing job in a sweep; reproducibility.

One tiny configuration (synthetic data, 32 px, 4 batches of 4 per epoch, 2 epochs, last.ckpt every 2 steps)
is trained in-process twice (reproducibility) and as `python train.py` subprocesses that are SIGKILLed mid-epoch
and resumed. docs/reliability.md lists what each test proves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import covidnet.images.download as download
from covidnet.rundirs.checkpoint_saving import AtomicCheckpointIO, atomic_torch_save
from covidnet.images.covid_ct_layout import CLASSES, SPLITS, check_dataset, image_dir, is_complete_layout, split_file
from covidnet.core.hardware import resolve
from covidnet.rundirs.runs import RunDirError, SweepDir
from covidnet.apps.train import check_run_dir, train
from mirror_md5 import mirror_md5
from synthetic import make_dataset

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
COUNTS = {"train": 8, "val": 2, "test": 2}  # per class: 16 training images = 4 batches of 4
TINY = [
    "experiment=smoke",
    "data.image_size=32",
    "data.batch_size=4",
    "trainer.max_epochs=2",
    "callbacks.step_checkpoint.every_n_train_steps=2",
    "callbacks.step_checkpoint.train_time_interval=null",
    "+trainer.enable_progress_bar=false",
    "+trainer.num_sanity_val_steps=0",
    "callbacks.cam=null",  # CAM overlays cost time and do not touch training
]
KILL_STEP = 7  # epoch 1, batch 3 of 4: last.ckpt holds step 6, so one step is lost and replayed


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def record(path: Path) -> list[str]:
    return ["+callbacks.rec._target_=fault_helpers.RecordBatches", f"+callbacks.rec.path={path}"]


def read_records(path: Path) -> list[tuple[int, str]]:
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]


def train_py(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "covid-ct"
    make_dataset(root, COUNTS, seed=3)
    return root


@pytest.fixture(scope="module")
def reference(tiny_root, tmp_path_factory) -> dict:
    """An uninterrupted in-process run: metrics, predictions and the batch digest of every step."""
    out = tmp_path_factory.mktemp("reference")
    cfg = compose_cfg([*TINY, f"data.root={tiny_root}", f"paths.output_dir={out}", *record(out / "batches.jsonl")])
    metrics = train(cfg)
    return {"metrics": metrics, "out": out, "batches": read_records(out / "batches.jsonl")}


# --- reproducibility ---------------------------------------------------------------------------------
def test_same_seed_same_machine_gives_identical_test_metrics(tiny_root, reference, tmp_path):
    cfg = compose_cfg([*TINY, f"data.root={tiny_root}", f"paths.output_dir={tmp_path}", *record(tmp_path / "batches.jsonl")])
    metrics = train(cfg)
    assert read_records(tmp_path / "batches.jsonl") == reference["batches"]
    # exact: same CPU kernels on the same data in the same order; any drift would be a reproducibility bug
    assert metrics["test"] == reference["metrics"]["test"]
    assert (tmp_path / "predictions_test.csv").read_text() == (reference["out"] / "predictions_test.csv").read_text()


def test_a_different_seed_trains_on_different_batches(tiny_root, reference, tmp_path):
    """The order is seeded, not fixed: otherwise the test above could not fail."""
    from covidnet.images.sampling import EpochSampler

    a, b = EpochSampler(16, seed=0), EpochSampler(16, seed=1)
    assert list(a) != list(b)
    assert list(a) == list(EpochSampler(16, seed=0))
    assert [i for i, _ in EpochSampler(16, seed=0, position=lambda: (1, 0))] != [i for i, _ in a]  # new order each epoch
    assert list(EpochSampler(16, seed=0, position=lambda: (0, 12))) == list(a)[12:]  # a resumed epoch starts where it stopped


# --- SIGKILL mid-epoch, resume with ckpt_path=last ---------------------------------------------------
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tiny_root, reference, tmp_path):
    run_dir = tmp_path / "run"
    common = [*TINY, f"data.root={tiny_root}", f"hydra.run.dir={run_dir}", *record(tmp_path / "batches.jsonl")]

    killed = train_py(*common, "+callbacks.killer._target_=fault_helpers.KillAtStep", f"+callbacks.killer.step={KILL_STEP}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (run_dir / "metrics.json").exists()
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # whole and readable
    assert ckpt["global_step"] == KILL_STEP - 1 and ckpt["epoch"] == 1  # saved mid-epoch 1
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".partial")]

    # the run directory is protected: starting again there without ckpt_path is refused
    with pytest.raises(RunDirError, match="ckpt_path=last"):
        check_run_dir(run_dir, None)

    # resumed with loader workers, which ask for indices before Lightning has adjusted its counters on restart;
    # augmentation is seeded per image, so workers do not change the batches either
    resumed = train_py(*common, "ckpt_path=last", "data.num_workers=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint path at" in resumed.stdout + resumed.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())

    steps = read_records(tmp_path / "batches.jsonl")
    ref = dict(reference["batches"])
    resumed_steps = steps[KILL_STEP + 1 :]  # what the resumed process trained on (killed run recorded 0..KILL_STEP)
    assert [s for s, _ in resumed_steps] == list(range(KILL_STEP - 1, 8))  # the lost step is redone, nothing else
    assert all(digest == ref[step] for step, digest in resumed_steps)  # same images, same augmentation
    assert metrics["test"] == reference["metrics"]["test"]
    assert metrics["epochs_trained"] == reference["metrics"]["epochs_trained"]


# --- checkpoint files are never half-written ---------------------------------------------------------
def _die_while_saving(target: Path, save) -> int:
    """Fork a child that starts writing a checkpoint and is SIGKILLed after half the bytes; return its status."""
    pid = os.fork()
    if pid == 0:  # child
        try:
            real_save = torch.save

            def half_then_die(obj, f, *args, **kwargs):
                import io

                buf = io.BytesIO()
                real_save(obj, buf, *args, **kwargs)
                data = buf.getvalue()
                if isinstance(f, (str, os.PathLike)):
                    f = open(f, "wb")
                f.write(data[: len(data) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)

            torch.save = half_then_die
            save({"state_dict": {"w": torch.full((1000,), 2.0)}}, target)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    return status


def test_kill_during_checkpoint_save_leaves_previous_file_intact(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.full((1000,), 1.0)}}, target)

    status = _die_while_saving(target, AtomicCheckpointIO().save_checkpoint)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert torch.load(target, weights_only=True)["state_dict"]["w"].eq(1.0).all()  # the previous checkpoint
    leftovers = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].endswith(".partial")  # half a file, never named *.ckpt

    atomic_torch_save({"state_dict": {"w": torch.full((1000,), 3.0)}}, target)  # the next save cleans up
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert torch.load(target, weights_only=True)["state_dict"]["w"].eq(3.0).all()


def test_the_same_kill_does_corrupt_a_plain_torch_save(tmp_path):
    """Control: the injected kill really leaves half a file when a writer does not rename atomically."""
    target = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.full((1000,), 1.0)}}, target)
    _die_while_saving(target, lambda obj, path: torch.save(obj, path))
    with pytest.raises(Exception):  # noqa: B017 -- any load failure; the error type is torch-internal
        torch.load(target, weights_only=True)


def test_trainer_from_config_writes_checkpoints_atomically(tmp_path):
    cfg = compose_cfg([*TINY, f"paths.output_dir={tmp_path}"])
    # precision=auto is covidnet's, not Lightning's: resolved for this machine as train() does
    cfg.trainer.precision = resolve(cfg.trainer.precision, cfg.channels_last, cfg.trainer.accelerator).precision
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# --- a failing job in a multirun ---------------------------------------------------------------------
def test_multirun_runs_every_job_and_names_the_failed_one(tiny_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = train_py(
        "-m", "model.freeze=bogus,backbone", "experiment=smoke", "data.image_size=32", "data.batch_size=4",
        "trainer.max_epochs=1", "callbacks=none", "~logger", "test=false", "+trainer.enable_progress_bar=false",
        f"data.root={tiny_root}", f"hydra.sweep.dir={sweep}",
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0  # the sweep as a whole is reported as failed
    done = [d for d in sweep.iterdir() if (d / "metrics.json").is_file()]
    assert [d.name for d in done if "model.freeze=backbone" in d.name] == [d.name for d in done]  # the job after the failure still ran
    assert len(done) == 1
    failed = SweepDir(sweep).failed_jobs()
    assert len(failed) == 1 and "model.freeze=bogus" in failed[0]["job"] and failed[0]["num"] == 0
    assert "model.freeze=bogus" in failed[0]["error"]  # the error the job raised (the option check names key and value)
    assert f"1 job(s) of the sweep in {sweep} FAILED" in output
    assert f"{failed[0]['job']}: " in output  # named in the summary


# --- interrupted dataset download --------------------------------------------------------------------
def official_mirror(tmp_path: Path) -> tuple[str, int]:
    """A file:// copy of the official repository's files (two zips, six split lists) made from synthetic data."""
    data = tmp_path / "synthetic" / "covid-ct"
    make_dataset(data, {"train": 3, "val": 2, "test": 2})
    mirror = tmp_path / "mirror"
    for label, folder, _, _ in CLASSES:
        archive = mirror / f"{folder}.zip"
        archive.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(archive, "w") as zf:
            for image in image_dir(data, label).iterdir():
                zf.write(image, f"{Path(folder).name}/{image.name}")  # the official zips wrap a folder
        for split in SPLITS:
            src = split_file(data, label, split)
            dest = mirror / src.relative_to(data)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(src.read_bytes())
    return mirror.as_uri(), 2 * (3 + 2 + 2)


def leftovers(root: Path) -> list[Path]:
    return sorted(root.parent.glob(f".{root.name}.download-*"))


def test_failed_download_leaves_nothing_and_retry_succeeds(tmp_path, monkeypatch):
    url, n = official_mirror(tmp_path)
    monkeypatch.setattr(download, "N_IMAGES", n)
    monkeypatch.setattr(download, "KNOWN_MD5", mirror_md5(tmp_path / "mirror"))
    mirror = Path(url.removeprefix("file://"))
    root = tmp_path / "data" / "covid-ct"
    last_split = mirror / "Data-split/NonCOVID/testCT_NonCOVID.txt"
    saved = last_split.read_bytes()
    last_split.unlink()  # the connection drops before the last file

    with pytest.raises(download.DatasetError, match="Could not download"):
        download.download_covid_ct(root, base_url=url)
    assert not root.exists() and not leftovers(root)

    last_split.write_bytes(saved)
    download.download_covid_ct(root, base_url=url)
    splits, _ = check_dataset(root)
    assert sum(len(s) for s in splits.values()) == n and not leftovers(root)


def test_sigkilled_download_looks_incomplete_and_next_run_retries_cleanly(tmp_path, monkeypatch):
    url, n = official_mirror(tmp_path)
    monkeypatch.setattr(download, "N_IMAGES", n)
    monkeypatch.setattr(download, "KNOWN_MD5", mirror_md5(tmp_path / "mirror"))
    root = tmp_path / "data" / "covid-ct"
    pid = os.fork()
    if pid == 0:  # child: killed after the image archives and one split file arrived
        try:
            real_fetch, fetched = download.fetch, []

            def fetch_then_die(u, dest, *a, **k):
                real_fetch(u, dest, *a, **k)
                fetched.append(dest)
                if len(fetched) == 3:
                    os.kill(os.getpid(), signal.SIGKILL)

            download.fetch = fetch_then_die
            download.download_covid_ct(root, base_url=url)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    assert not root.exists() and not is_complete_layout(root)  # nothing at data.root looks like a dataset
    assert len(leftovers(root)) == 1  # the killed process's hidden temporary folder

    download.download_covid_ct(root, base_url=url)  # the next run starts over and clears the stale folder
    splits, _ = check_dataset(root)
    assert sum(len(s) for s in splits.values()) == n and not leftovers(root)
