"""visualize.py end to end: figure, per-image table and CAM numbers for one and two checkpoints; clear errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from cam_training import blob_run
from covidnet.trained.checkpoint import CheckpointError
from covidnet.core.errors import ConfigError
from covidnet.trained.visualization import VisualizeError, visualize
from synthetic import blob_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return blob_run(tmp_path_factory)


@pytest.fixture(scope="module")
def lesions(tmp_path_factory) -> Path:
    """A COVID-SemiSeg look-alike: blob slices with the blob as the 'lesion' mask."""
    folder = tmp_path_factory.mktemp("semiseg")
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    rng = np.random.default_rng(3)
    for n in range(4):
        grey, (cy, cx) = blob_image(rng, True, (80, 80))
        yy, xx = np.mgrid[0:80, 0:80]
        mask = ((yy - cy * 80) ** 2 + (xx - cx * 80) ** 2) <= 12**2
        Image.fromarray(grey).save(folder / "images" / f"{n}.jpg", quality=95)
        Image.fromarray((mask * 255).astype(np.uint8)).save(folder / "masks" / f"{n}.png")
    return folder


def config(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("visualize", overrides=list(overrides))


def fake_job(run, job: Path, overrides: list[str], finished: bool = True) -> Path:
    """A job directory as train.py leaves it (Hydra record, checkpoints, metrics.json naming the best one),
    holding the blob model; ``finished=False``: killed before metrics.json, only last.ckpt."""
    (job / "checkpoints").mkdir(parents=True)
    (job / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    if not finished:
        shutil.copy(run.ckpt, job / "checkpoints" / "last.ckpt")
        return job
    best = job / "checkpoints" / "epoch=003-val_auroc=1.0000.ckpt"
    shutil.copy(run.ckpt, best)
    (job / "metrics.json").write_text(json.dumps({"best_checkpoint": str(best.resolve()), "best_epoch": 3}))
    return job


def sweep_of_two(run, tmp_path: Path) -> Path:
    """A sweep directory with two finished jobs, each holding a checkpoint (same weights, two files)."""
    sweep = tmp_path / "sweep"
    for job in ("init=scratch", "init=imagenet"):
        fake_job(run, sweep / job, [job, f"data.root={run.root}"])
    return sweep


def check_outputs(result: dict, n_models: int) -> dict:
    """The files of a target=label run with 10 + 10 drawn images."""
    out = Path(result["out_dir"])
    assert result["rows"] == 20
    for name in ("figure.png", "images.csv", "results.json"):
        assert (out / name).is_file(), name
    with Image.open(out / "figure.png") as im:
        width, height = im.size
    assert height > 10 * width / (1 + 2 * n_models)  # 20 rows of square panels, 1 + 2 * models columns
    rows = list(csv.DictReader(open(out / "images.csv")))
    drawn = [r for r in rows if r["figure_row"] != ""]
    assert sorted(int(r["figure_row"]) for r in drawn) == list(range(20))
    assert [int(r["label"]) for r in sorted(drawn, key=lambda r: int(r["figure_row"]))] == [1] * 10 + [0] * 10
    results = json.loads((out / "results.json").read_text())
    assert len(results["models"]) == n_models
    for name in results["models"]:
        assert [int(r[f"{name}:target"]) for r in rows] == [int(r["label"]) for r in rows]  # target=label
    for name in results["models"]:
        assert all(0 <= float(r[f"{name}:prob_covid"]) <= 1 for r in rows)
        for method in ("gradcam", "eigencam", "block_random", "pixel_random"):
            for kind in ("prob_drop", "logit_drop", "lerf_prob_drop", "lerf_logit_drop"):  # both removal orders
                assert results["faithfulness"][name][method][kind]["n"] == len(rows)
        for method in ("gradcam", "eigencam"):
            assert results["faithfulness"][name][method]["logit_drop_minus_block_random"]["n"] == len(rows)
            assert all(-1 <= float(r[f"{name}:{method}:prob_drop"]) <= 1 for r in rows)
        sc = results["shortcut"][name]
        for method in ("gradcam", "eigencam"):
            # every image is scored against its lung field, or counted as having none, or its map as empty (never
            # dropped silently)
            assert sc[method]["n"] + sc["no_lungs_found"] + sc["empty_maps"][method] == len(rows)
            assert sc[method]["mean"] is None or 0 <= sc[method]["mean"] <= 1
    return results


def test_one_checkpoint_from_the_command_line(run, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "visualize.py", f"ckpt={run.ckpt}", f"data.root={run.root}", f"paths.log_dir={tmp_path}", "score_images=figure"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    written = [line.split("Wrote ", 1)[1] for line in done.stdout.splitlines() if line.startswith("Wrote ")]
    assert len(written) == 3 and all(Path(p).is_file() and Path(p).is_relative_to(tmp_path) for p in written)
    out = Path(written[0]).parent
    assert out.parent.parent == tmp_path / "visualize"  # <paths.log_dir>/visualize/runs/<time stamp>
    check_outputs({"out_dir": str(out), "rows": 20}, n_models=1)


def test_two_checkpoints_with_lesion_localisation(run, lesions, tmp_path):
    sweep = sweep_of_two(run, tmp_path)
    paths = sorted(str(p) for p in sweep.glob("*/checkpoints/*.ckpt"))
    quoted = ",".join(f"'{p}'" for p in paths)  # sweep paths hold '=' and must be quoted for Hydra
    cfg = config(f"ckpt=[{quoted}]", f"data.root={run.root}", f"out_dir={tmp_path / 'out'}", f"localize={lesions}",
                 "score_images=split", "tensorboard=true")
    result = visualize(cfg)
    results = check_outputs(result, n_models=2)
    assert list(results["models"]) == ["init=imagenet", "init=scratch"]
    assert results["n_scored"] == 20  # the synthetic test split has 10 + 10 images
    for loc in results["localisation"].values():
        assert loc["n_slices"] == 4
        for method in ("gradcam", "eigencam"):
            assert 0 <= loc[method]["pointing_game_hit_rate"]["mean"] <= 1
            assert 0 <= loc[method]["mass_in_lesion"]["mean"] <= 1
            # every mean names the maps it is over: the empty ones are those without a lesion mass
            per = loc[method]["per_slice"]
            assert len(per["mass_in_lesion"]) == len(per["pointing_game_hit"]) == 4
            assert loc[method]["empty_maps"] == sum(v is None for v in per["mass_in_lesion"]) == 4 - loc[method]["mass_in_lesion"]["n"]
            assert np.mean(per["pointing_game_hit"]) == pytest.approx(loc[method]["pointing_game_hit_rate"]["mean"], abs=1e-4)
        assert loc["grid"] == [4, 4]  # the blob runs' 64 px inputs at the default layer
        assert 0 < loc["lesion_area_share"]["mean"] < 0.5
    assert list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))
    # the sweep directory itself names both jobs' best checkpoints
    again = visualize(config(f"ckpt={sweep}", f"data.root={run.root}", f"out_dir={tmp_path / 'out2'}", "score_images=figure",
                             "target=prediction"))
    assert list(again["results"]["models"]) == ["init=imagenet", "init=scratch"]
    for r in csv.DictReader(open(tmp_path / "out2" / "images.csv")):
        assert int(r["init=scratch:target"]) == int(float(r["init=scratch:prob_covid"]) >= 0.5)
    # never overwrite
    with pytest.raises(VisualizeError, match="never overwrites"):
        visualize(config(f"ckpt={sweep}", f"data.root={run.root}", f"out_dir={tmp_path / 'out2'}"))


def test_bad_checkpoints_and_settings_get_clear_errors(run, tmp_path):
    base = [f"data.root={run.root}", f"out_dir={tmp_path / 'out'}", "score_images=figure"]
    with pytest.raises(CheckpointError, match="not found"):
        visualize(config(f"ckpt={tmp_path / 'missing.ckpt'}", *base))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": torch.nn.Linear(2, 1).state_dict(), "epoch": 1}, foreign)
    with pytest.raises(CheckpointError, match="not a covidnet checkpoint"):
        visualize(config(f"ckpt={foreign}", *base))
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(run.ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        visualize(config(f"ckpt=[{run.ckpt},{broken}]", *base))
    with pytest.raises(VisualizeError, match="only 10 COVID images"):
        visualize(config(f"ckpt={run.ckpt}", "n_per_class=11", *base))
    with pytest.raises(ConfigError, match=r"nothing was started\):\n  methods=\['gradcam', 'lime'\]: must be"):
        visualize(config(f"ckpt={run.ckpt}", "methods=[gradcam,lime]", *base))
    with pytest.raises(VisualizeError, match="images/ and masks/"):
        visualize(config(f"ckpt={run.ckpt}", f"localize={tmp_path}", *base))
    assert not (tmp_path / "out" / "figure.png").exists()


def test_a_copied_sweep_reads_its_own_checkpoints_and_skips_unfinished_jobs(run, tmp_path, capsys):
    """Checkpoints are found inside the run directory, never through metrics.json's absolute path;
    an interrupted job is skipped and named, or drawn from its last checkpoint and labelled when asked."""
    original = tmp_path / "original"
    fake_job(run, original / "init=scratch", ["init=scratch"])
    fake_job(run, original / "init=imagenet", ["init=imagenet"], finished=False)
    copy = shutil.copytree(original, tmp_path / "copy")
    # the original's best checkpoint is replaced by a foreign file: reading it would fail
    next((original / "init=scratch" / "checkpoints").glob("epoch=*.ckpt")).write_bytes(b"not the model")
    base = [f"data.root={run.root}", "score_images=figure", "n_per_class=1", "methods=[gradcam]"]
    result = visualize(config(f"ckpt={copy}", f"out_dir={tmp_path / 'out'}", *base))
    models = result["results"]["models"]
    assert list(models) == ["init=scratch"]
    assert Path(models["init=scratch"]["checkpoint"]).is_relative_to(copy)
    assert result["results"]["skipped"] == [{"run_dir": str(copy / "init=imagenet"), "reason": result["results"]["skipped"][0]["reason"]}]
    assert "unfinished" in result["results"]["skipped"][0]["reason"]
    printed = capsys.readouterr().out
    assert "skipped 1 run(s)" in printed and str(copy / "init=imagenet") in printed and "include_unfinished=true" in printed

    labelled = visualize(config(f"ckpt={copy}", f"out_dir={tmp_path / 'out2'}", "include_unfinished=true", *base))["results"]
    assert list(labelled["models"]) == ["init=imagenet [unfinished: last.ckpt]", "init=scratch"]
    assert labelled["models"]["init=imagenet [unfinished: last.ckpt]"]["unfinished"] == "unfinished: last.ckpt"
    assert labelled["skipped"] == []

    # a run directory given alone that is unfinished: nothing to draw, and the message says why
    with pytest.raises(VisualizeError, match="unfinished"):
        visualize(config(f"ckpt='{copy / 'init=imagenet'}'", f"out_dir={tmp_path / 'out3'}", *base))


def test_figure_columns_are_labelled_by_what_distinguishes_the_models():
    from covidnet.explain.cam_figure import column_labels

    names = ["data.image_size=64,init=imagenet,trainer.max_epochs=1", "data.image_size=64,init=scratch,trainer.max_epochs=1"]
    assert column_labels(names) == ["init=imagenet", "init=scratch"]
    two = column_labels(["data.fraction=0.25,init=scratch,model.freeze=up_to_layer4,seed=0", "data.fraction=0.5,init=ct,model.freeze=up_to_layer4,seed=0"])
    assert two == ["data.fraction=0.25\ninit=scratch", "data.fraction=0.5\ninit=ct"]  # wrapped to the column
    long = column_labels(["model.weights_path_like_option=" + "x" * 40 + ",init=a", "init=b"])
    assert all(len(line) <= 24 for label in long for line in label.split("\n"))
    assert column_labels(["init=scratch"]) == ["init=scratch"]  # one model: its whole name
    assert column_labels(["scratch-resnet18", "ct-resnet152"]) == ["scratch-resnet18", "ct-resnet152"]
