"""Ensembles: each sweep-report row's runs scored as one model (covidnet/report/ensemble.py), and evaluate.py's
``ensemble=true`` (covidnet/trained/evaluation.py); both average through covidnet/metrics/ensembles.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from covidnet.metrics import stats
from covidnet.report import main
from fake_runs import fake_job

ROOT = Path(__file__).resolve().parents[1]


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


# --- evaluate.py ensemble=true: checkpoints scored as one model (covidnet.trained.evaluation) -----------------------------
def _probs(path) -> dict[str, float]:
    import csv

    with open(path, newline="") as f:
        return {r["path"]: float(r["prob_covid"]) for r in csv.DictReader(f)}


def test_evaluate_scores_an_ensemble_as_the_mean_of_its_members_file_by_file(synthetic_root, tmp_path):
    import csv

    from hydra import compose, initialize_config_dir
    from PIL import Image
    from train_configs import tiny_cfg

    from covidnet.apps.evaluate import evaluate
    from covidnet.apps.train import train

    for seed in (0, 1):
        train(tiny_cfg(synthetic_root, tmp_path / f"seed{seed}", f"seed={seed}"))
    semiseg = tmp_path / "semiseg"
    (semiseg / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(semiseg / "images" / f"{n}.jpg")
    out = tmp_path / "out"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt=[{tmp_path / 'seed0'},{tmp_path / 'seed1'}]", "ensemble=true", "eval=[semiseg]",
                                             f"eval.semiseg.root={semiseg}", f"eval_data={synthetic_root.parent}", f"out_dir={out}",
                                             "n_boot=200", "progress=false"])
    rows = evaluate(cfg)["rows"]
    members = sorted(d for d in out.iterdir() if d.is_dir() and d.name != "ensemble of 2")
    assert len(members) == 2
    for name in ("semiseg", "covid_ct_test"):  # every eval set, and the official test split (in-split) added for the ensemble
        each = [_probs(m / name / "predictions.csv") for m in members]
        ensemble = _probs(out / "ensemble of 2" / name / "predictions.csv")
        assert list(ensemble) == list(each[0]) == list(each[1]) and len(ensemble) == json.loads((members[0] / name / "metrics.json").read_text())["n_images"]
        for key, p in ensemble.items():
            assert p == pytest.approx((each[0][key] + each[1][key]) / 2, abs=1e-6)
        assert any(abs(each[0][k] - each[1][k]) > 1e-3 for k in ensemble)  # two different models: the mean is not either one
        metrics = json.loads((out / "ensemble of 2" / name / "metrics.json").read_text())
        assert [m["checkpoint"] for m in metrics["members"]] == [json.loads((m / name / "metrics.json").read_text())["checkpoint"] for m in members]
        assert {r["model"] for r in rows if r["set"] == name and r["level"] == "slices"} == {"ensemble of 2", *(m.name for m in members)}
    # in-split: the metrics and image-level interval of the mean probabilities
    labels = {k: int(r["label"]) for k, r in ((r["path"], r) for r in csv.DictReader(open(out / "ensemble of 2" / "covid_ct_test" / "predictions.csv")))}
    ensemble = _probs(out / "ensemble of 2" / "covid_ct_test" / "predictions.csv")
    want = stats.bootstrap_metrics(np.array([labels[k] for k in ensemble]), np.array(list(ensemble.values())), 200, 0)["auroc"]
    (row,) = [r for r in rows if r["model"] == "ensemble of 2" and r["set"] == "covid_ct_test" and r["subset"] == "all"]
    assert row["auroc"] == pytest.approx(want.estimate, abs=1e-5)
    assert row["auroc_low"] == pytest.approx(want.low, abs=1e-5) and row["auroc_high"] == pytest.approx(want.high, abs=1e-5)
    summary = (out / "summary.csv").read_text()
    assert summary.count("ensemble of 2,covid_ct_test,slices,all") == 1


def test_an_ensemble_of_checkpoints_that_see_images_differently_is_refused(tmp_path):
    from hydra import compose, initialize_config_dir
    from fake_runs import make_checkpoint

    from covidnet.core.errors import EvalError
    from covidnet.apps.evaluate import evaluate

    a = make_checkpoint(tmp_path / "a" / "m.ckpt", image_size=32)
    b = make_checkpoint(tmp_path / "b" / "m.ckpt", image_size=48)

    def run(*ckpts):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("evaluate", overrides=[f"ckpt=[{','.join(map(str, ckpts))}]", "ensemble=true", "eval=[semiseg]",
                                                 f"eval.semiseg.root={tmp_path / 'nowhere'}", f"out_dir={tmp_path / 'out'}", "progress=false"])
        evaluate(cfg)

    with pytest.raises(EvalError, match=re.escape(f"ensemble=true: {b} was trained with image_size=48, {a} with image_size=32")):
        run(a, b)
    with pytest.raises(EvalError, match="at least 2 checkpoints"):
        run(a)
    assert not (tmp_path / "out").exists()  # refused before any set is read or anything written
