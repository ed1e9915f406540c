"""Seed ensembles in the sweep report: each row's runs scored as one model (covidnet/report/ensemble.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covidnet import stats
from covidnet.report import main
from fake_runs import fake_job


def test_each_arm_is_scored_as_the_mean_of_its_seeds_with_an_image_interval(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    probs = {}
    for init, skill in (("scratch", 0.05), ("imagenet", 0.2)):
        for seed in (0, 1, 2):
            p = np.clip(skill * labels + (1 - skill) * rng.random(60), 0, 1)
            probs[(init, seed)] = p
            fake_job(tmp_path / f"init={init},seed={seed}", [f"init={init}", f"seed={seed}"], labels, p, {"init": init, "seed": seed})
    assert main([str(tmp_path), "--n-boot", "200"]) == 0
    record = json.loads((tmp_path / "report.json").read_text())["ensembles"]
    assert record["n_runs"] == {"init=scratch": 3, "init=imagenet": 3}
    for init in ("scratch", "imagenet"):
        mean = np.mean([probs[(init, s)] for s in (0, 1, 2)], axis=0)
        want = stats.binary_metrics(labels, mean)
        got = record["sets"]["test"][f"init={init}"]
        assert got["auroc"]["estimate"] == pytest.approx(float(want["auroc"]))
        assert got["acc"]["estimate"] == pytest.approx(float(want["acc"]))
        assert got["auroc"]["low"] < got["auroc"]["estimate"] < got["auroc"]["high"]
    (diff,) = record["differences"]
    assert (diff["arm"], diff["reference"]) == ("init=imagenet", "init=scratch")
    ens = {i: record["sets"]["test"][f"init={i}"]["auroc"]["estimate"] for i in ("scratch", "imagenet")}
    assert diff["metrics"]["auroc"]["estimate"] == pytest.approx(ens["imagenet"] - ens["scratch"])
    text = (tmp_path / "report.md").read_text()
    assert "## Seed ensembles" in text and "| init=imagenet | 3 |" in text


def test_a_row_of_one_run_has_no_ensemble(tmp_path):
    labels = np.array([0, 1] * 10)
    for init in ("scratch", "imagenet"):
        fake_job(tmp_path / f"init={init},seed=0", [f"init={init}", "seed=0"], labels, np.linspace(0, 1, 20), {"init": init, "seed": 0})
    assert main([str(tmp_path), "--n-boot", "200"]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["ensembles"] == {}
    assert "## Seed ensembles" not in (tmp_path / "report.md").read_text()


def test_ensembles_are_paired_on_the_images_both_scored(tmp_path):
    """The difference of two ensembles uses the images both arms scored, matched by name (not by position)."""
    rng = np.random.default_rng(1)
    labels = np.array([0, 1] * 15)
    probs = {}
    for init in ("scratch", "imagenet"):
        for seed in (0, 1):
            p = np.clip(0.3 * labels + 0.7 * rng.random(30), 0, 1)
            job = tmp_path / f"init={init},seed={seed}"
            keep = slice(None) if init == "scratch" else slice(4, None)  # imagenet lacks the first four images
            fake_job(job, [f"init={init}", f"seed={seed}"], labels[keep], p[keep], {"init": init, "seed": seed})
            if init == "imagenet":  # its files are img0.. again: rename them to the images they are
                rows = (job / "predictions_test.csv").read_text().splitlines()
                rows = [rows[0]] + [f"img{i + 4}.png," + r.split(",", 1)[1] for i, r in enumerate(rows[1:])]
                (job / "predictions_test.csv").write_text("\n".join(rows) + "\n")
            probs[(init, seed)] = dict(zip([f"img{i}.png" for i in range(30)][keep], p[keep]))
    assert main([str(tmp_path), "--n-boot", "200"]) == 0
    (diff,) = json.loads((tmp_path / "report.json").read_text())["ensembles"]["differences"]
    assert diff["n"] == 26
    common = [f"img{i}.png" for i in range(4, 30)]
    y = labels[4:]
    mean = {i: np.mean([[probs[(i, s)][k] for k in common] for s in (0, 1)], axis=0) for i in ("scratch", "imagenet")}
    want = stats.binary_metrics(y, mean["imagenet"])["auroc"] - stats.binary_metrics(y, mean["scratch"])["auroc"]
    assert diff["metrics"]["auroc"]["estimate"] == pytest.approx(float(want))
