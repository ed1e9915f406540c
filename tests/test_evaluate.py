"""evaluate.py: checkpoints on DICOM / image-folder / semiseg sets, patient bootstrap, outputs, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from synthetic import make_dataset
from fake_runs import make_checkpoint, make_run
from synthetic_dicom import MD_FOLDERS, write_scans

from covidnet.metrics import arm_stats, stats
from covidnet.trained.checkpoint import CheckpointError
from covidnet.images.preprocess import Preprocess, resize_grey
from covidnet.core.errors import EvalError
from covidnet.apps.evaluate import evaluate
from covidnet.rundirs.run_files import EVAL_COLUMNS
from covidnet.rundirs.runs import RunDir
from covidnet.data.sets import set_config
from covidnet.models.model import CovidClassifier
from covidnet.images.sources import read_source

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    # COVID-CT-MD's folder names, so conf/eval/covid_ct_md.yaml's class map applies as it is
    return write_scans(tmp_path_factory.mktemp("dicom") / "scans", MD_FOLDERS)


@pytest.fixture(scope="module")
def semiseg(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("semiseg")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for n in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(root / "images" / f"{n}.jpg")
    return root


def config(scans: Path, semiseg: Path, out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[
            "eval=[covid_ct_md,semiseg]", f"eval.covid_ct_md.root={scans}", f"eval.semiseg.root={semiseg}",
            "eval.covid_ct_md.read.slice_labels=null", "eval.covid_ct_md.patient_topk=2",
            f"out_dir={out}", "n_boot=200", "progress=false", *overrides])
    return cfg


# --- patient bootstrap ------------------------------------------------------------------------------------------
def test_patient_bootstrap_draws_whole_patients_stratified_by_label():
    groups = ["a"] * 3 + ["b"] * 2 + ["c"] * 4 + ["d"] * 1 + ["e"] * 2
    labels = [1] * 3 + [1] * 2 + [0] * 4 + [0] * 1 + [0] * 2
    resamples = stats.patient_bootstrap_indices(groups, labels, n_boot=300, seed=4)
    members = {g: [i for i, x in enumerate(groups) if x == g] for g in "abcde"}
    rng = np.random.default_rng(4)  # the documented protocol, by hand
    for idx in resamples:
        drawn_neg = [["c", "d", "e"][k] for k in rng.integers(0, 3, 3)]  # label 0 first (ascending labels)
        drawn_pos = [["a", "b"][k] for k in rng.integers(0, 2, 2)]
        assert idx.tolist() == [i for g in drawn_neg + drawn_pos for i in members[g]]
    # every resample has 2 COVID and 3 non-COVID patients, so both classes
    assert all(set(np.asarray(labels)[idx].tolist()) == {0, 1} for idx in resamples)
    with pytest.raises(ValueError, match="different labels"):
        stats.patient_bootstrap_indices(["a", "a"], [0, 1], n_boot=2)


def test_resampling_patients_widens_the_interval_when_slices_of_a_patient_agree():
    # ten patients (5 per class, the fewest with an interval) of 20 slices each; a patient's slices share one
    # probability: 10 independent units, not 200
    groups = [g for g in "abcdefghij" for _ in range(20)]
    labels = np.repeat([1] * 5 + [0] * 5, 20)
    probs = np.repeat([0.9, 0.3, 0.8, 0.2, 0.7, 0.6, 0.1, 0.4, 0.65, 0.05], 20)
    by_image = stats.bootstrap_metrics(labels, probs, n_boot=1000, seed=0)["acc"]
    by_patient = stats.bootstrap_metrics(labels, probs, n_boot=1000, seed=0, groups=groups)["acc"]
    assert by_image.estimate == by_patient.estimate == pytest.approx(0.6)
    assert by_patient.high - by_patient.low > 2 * (by_image.high - by_image.low)
    same = arm_stats.paired_difference(labels, probs[None], probs[None].copy(), n_boot=100, groups=groups)
    assert same["auroc"].estimate == 0 and same["auroc"].low == 0 and same["auroc"].high == 0


# --- evaluate end to end ---------------------------------------------------------------------------------------
def test_evaluate_writes_metrics_and_predictions_through_the_checkpoints_preprocessing(tmp_path, scans, semiseg):
    ckpt = make_checkpoint(tmp_path / "m.ckpt", image_size=32, normalization="imagenet")
    out = tmp_path / "out"
    result = evaluate(config(scans, semiseg, out, f"ckpt={ckpt}"))
    name = "scratch-resnet18"
    metrics = json.loads((out / name / "covid_ct_md" / "metrics.json").read_text())
    with open(out / name / "covid_ct_md" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert metrics["n_images"] == len(rows) == 20 and metrics["n_patients"] == 5 and metrics["n_covid"] == 8
    assert set(metrics["images"]) == {"all", "COVID vs CAP", "COVID vs normal"}
    assert metrics["images"]["COVID vs CAP"]["n"] == 12 and metrics["images"]["all"]["resampled"].startswith("patients")
    assert set(metrics["patients"]) == {"mean", "top2_mean"} and metrics["patients"]["mean"]["all"]["n"] == 5
    assert set(rows[0]) == {"path", "patient", "label", "diagnosis", "position", "slice_label", "prob_covid"}
    # the same numbers as the model on the checkpoint's preprocessing, done by hand
    model, _ = CovidClassifier(arch="resnet18", init="scratch"), None
    model.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    model.eval()
    records, _ = read_source("dicom", scans, classes={k: 1 if k.startswith("COVID") else 0 for k in MD_FOLDERS})
    x = torch.stack([Preprocess("imagenet")(resize_grey(r.load(), 32)) for r in records])
    with torch.no_grad():
        expected = torch.sigmoid(model(x)).numpy()
    assert [r["path"] for r in rows] == [r.key for r in records]
    np.testing.assert_allclose([float(r["prob_covid"]) for r in rows], expected, atol=1e-5)
    patient_mean = {p: np.mean([float(r["prob_covid"]) for r in rows if r["patient"] == p]) for p in {r["patient"] for r in rows}}
    assert metrics["patient_probs"]["COVID-19 subjects/p1"]["mean"] == pytest.approx(patient_mean["COVID-19 subjects/p1"], abs=1e-5)
    semi = json.loads((out / name / "semiseg" / "metrics.json").read_text())
    assert semi["n_images"] == 5 and semi["images"]["all"]["metrics"]["auroc"] is None
    assert semi["images"]["all"]["metrics"]["specificity"] is None and semi["images"]["all"]["metrics"]["sensitivity"] is not None
    assert "patients" not in semi
    assert (out / "summary.csv").is_file() and len(result["rows"]) == len((out / "summary.csv").read_text().splitlines()) - 1
    # never overwritten: the same command again keeps every result as it is (nothing was missing), and another
    # evaluation into the same directories fails before writing anything
    before = (out / name / "semiseg" / "metrics.json").stat().st_mtime_ns
    summary = (out / "summary.csv").read_text()
    evaluate(config(scans, semiseg, out, f"ckpt={ckpt}"))
    assert (out / name / "semiseg" / "metrics.json").stat().st_mtime_ns == before and (out / "summary.csv").read_text() == summary
    with pytest.raises(EvalError, match="never overwrites"):
        evaluate(config(scans, semiseg, out, f"ckpt={ckpt}", "eval.covid_ct_md.patient_topk=3"))
    assert (out / name / "semiseg" / "metrics.json").stat().st_mtime_ns == before


def test_the_checkpoints_preprocessing_wins_and_evaluate_says_so(tmp_path, scans, semiseg, capsys):
    ckpt = make_checkpoint(tmp_path / "m.ckpt", image_size=32, normalization="unit")
    evaluate(config(scans, semiseg, tmp_path / "out", f"ckpt={ckpt}", "data.image_size=224", "data.normalization=unit"))
    said = capsys.readouterr().out
    assert "trained with data.image_size=32; data.image_size=224 is ignored (the checkpoint's preprocessing wins)" in said
    assert "normalization" not in said.split("ignored")[0].split("note:")[-1]
    metrics = json.loads((tmp_path / "out" / "scratch-resnet18" / "semiseg" / "metrics.json").read_text())
    assert metrics["input_spec"] == {"image_size": 32, "normalization": "unit", "field": "full", "intensity": "none", "crop_margin": 0.05}
    assert metrics["lung_fallbacks"] is None  # field=full, intensity=none: no segmentation
    assert metrics["precision"] == {"precision": "32-true", "channels_last": False, "device": "cpu",
                                    "from": {"precision": "default (no run record)", "channels_last": "default (no run record)"}}
    assert any("image_size=224 is ignored" in n for n in metrics["notes"])


def test_sweep_into_runs_writes_each_runs_eval_area_once(tmp_path, scans, semiseg):
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        make_run(sweep / f"seed={seed}", seed=seed)
    evaluate(config(scans, semiseg, tmp_path / "out", f"ckpt={sweep}", "into_runs=true"))
    for seed in (0, 1):
        assert (sweep / f"seed={seed}" / "eval" / "covid_ct_md" / "predictions.csv").is_file()
        assert (sweep / f"seed={seed}" / "eval" / "semiseg" / "metrics.json").is_file()
    # the run's one reader of its eval area reads what evaluate.py wrote there (it once expected a `file` column)
    metrics, rows = RunDir(sweep / "seed=0").read_eval("covid_ct_md")
    assert metrics == json.loads((sweep / "seed=0" / "eval" / "covid_ct_md" / "metrics.json").read_text())
    assert len(rows) == metrics["n_images"] == 20 and list(rows[0]) == list(EVAL_COLUMNS)
    in_out_dir = (tmp_path / "out" / metrics["model"] / "covid_ct_md" / "predictions.csv").read_text()
    assert {r["path"] for r in rows} == {r["path"] for r in csv.DictReader(in_out_dir.splitlines())}
    # the report's external columns read them back: per group mean over runs, paired difference on the same images
    from covidnet.trained.external_summary import external_lines

    lines = external_lines({"init=scratch": [sweep / "seed=0"], "init=ct": [sweep / "seed=1"]}, "init=scratch", n_boot=100)
    text = "\n".join(lines)
    assert "### covid_ct_md (dicom, 20 images of 5 patients)" in text and "### semiseg (semiseg, 5 images)" in text
    auroc = [json.loads((sweep / f"seed={k}" / "eval" / "covid_ct_md" / "metrics.json").read_text())["images"]["all"]["metrics"]["auroc"]["estimate"]
             for k in (0, 1)]
    row = next(line for line in lines if line.startswith("| init=ct |"))
    assert row.split("|")[3].strip() == f"{auroc[1]:.3f}"
    at = next(i for i, line in enumerate(lines) if line.startswith("- init=ct − init=scratch on the same 20 images (patients resampled)"))
    assert "1 / 1 runs, not paired by seed" in lines[at]  # seeds 0 and 1: no common seed
    (diff,) = [line for line in lines[at + 1 : at + 4] if line.startswith("  - Δ auroc ")]
    # one run per arm: the estimate, no seed-aware interval; and with 2 COVID and 3 non-COVID patients, no interval
    # for these two trained models either, and why
    assert diff.startswith(f"  - Δ auroc {auroc[1] - auroc[0]:+.3f}: not enough seeds to judge;")
    assert f"for these trained models {auroc[1] - auroc[0]:+.3f} (n/a: too few patients per class (2 COVID, 3 non-COVID;" in diff
    # the same evaluation again: the runs' results are kept (copied to the new out_dir), not redone or refused
    before = (sweep / "seed=0" / "eval" / "semiseg" / "metrics.json").read_text()
    evaluate(config(scans, semiseg, tmp_path / "out2", f"ckpt={sweep}", "into_runs=true"))
    assert (sweep / "seed=0" / "eval" / "semiseg" / "metrics.json").read_text() == before
    assert (tmp_path / "out2" / metrics["model"] / "semiseg" / "metrics.json").read_text() == before
    with pytest.raises(EvalError, match="never overwrites"):  # another evaluation (other settings) of the same set
        evaluate(config(scans, semiseg, tmp_path / "out4", f"ckpt={sweep}", "into_runs=true", "eval.covid_ct_md.patient_topk=3"))
    assert not (tmp_path / "out4").exists()
    with pytest.raises(EvalError, match="not .*best checkpoint"):
        evaluate(config(scans, semiseg, tmp_path / "out3", f"ckpt=['{sweep / 'seed=0' / 'checkpoints' / 'last.ckpt'}']", "into_runs=true"))


def test_bad_input_fails_before_any_output(tmp_path, scans, semiseg):
    ckpt = make_checkpoint(tmp_path / "m.ckpt")
    bad = tmp_path / "bad"
    shutil.copytree(scans, bad)
    (bad / "Unknown").mkdir()  # a class folder the set's map does not name
    with pytest.raises(EvalError, match="does not name: Unknown"):
        evaluate(config(bad, semiseg, tmp_path / "out", f"ckpt={ckpt}"))
    (tmp_path / "empty_semiseg" / "images").mkdir(parents=True)
    with pytest.raises(EvalError, match="no images"):
        evaluate(config(scans, tmp_path / "empty_semiseg", tmp_path / "out", f"ckpt={ckpt}"))
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        evaluate(config(scans, semiseg, tmp_path / "out", f"ckpt={tmp_path / 'junk.ckpt'}"))
    with pytest.raises(EvalError, match="No set"), initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        evaluate(compose("evaluate", overrides=[f"ckpt={ckpt}", f"out_dir={tmp_path / 'out'}"]))
    assert not (tmp_path / "out").exists()


def test_set_configs_resolve_their_root_below_eval_data(monkeypatch):
    monkeypatch.setenv("COVIDNET_EVAL_DATA", "/data/sets")
    assert set_config("covid_ct_md").root == "/data/sets/covid-ct-md-sample"
    assert set_config("semiseg", eval_data="../shared/data").root == "../shared/data/covid-semiseg"
    assert set_config("covid_ct_md").read.window == {"width": 1500, "level": -600}
    with pytest.raises(EvalError, match="Known sets: covid_ct_md, covid_ct_test, covid_ct_val, folder, semiseg"):
        set_config("nope")


def test_eval_list_without_brackets():
    from covidnet.apps import evaluate as entry  # evaluate.py and covidnet-evaluate both run covidnet.apps.evaluate.main

    assert entry.list_overrides(["evaluate.py", "ckpt=x", "eval=covid_ct_md,semiseg"]) == ["evaluate.py", "ckpt=x", "eval=[covid_ct_md,semiseg]"]
    assert entry.list_overrides(["evaluate.py", "-m", "eval=a,b"]) == ["evaluate.py", "-m", "eval=a,b"]
    assert entry.list_overrides(["evaluate.py", "eval=semiseg"]) == ["evaluate.py", "eval=semiseg"]


# --- eval_sets in training ---------------------------------------------------------------------------------------
def test_training_evaluates_its_best_checkpoint_on_each_eval_set(synthetic_root, semiseg, tmp_path):
    from train_configs import tiny_cfg

    from covidnet.apps.train import train

    data = tmp_path / "sets"
    data.mkdir()
    (data / "covid-ct").symlink_to(synthetic_root)
    (data / "covid-semiseg").symlink_to(semiseg)
    from covidnet.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"eval_sets=.*nope.*: must be a list of eval sets among covid_ct_md"):
        train(tiny_cfg(synthetic_root, tmp_path / "bad", "eval_sets=[semiseg,nope]", f"eval_data={data}"))
    with pytest.raises(EvalError, match="semiseg set not found"):
        train(tiny_cfg(synthetic_root, tmp_path / "bad", "eval_sets=[semiseg]", f"eval_data={tmp_path / 'nowhere'}"))
    assert not list((tmp_path / "bad").rglob("*.ckpt"))  # refused before any training
    out = tmp_path / "run"
    metrics = train(tiny_cfg(synthetic_root, out, "eval_sets=[covid_ct_test,covid_ct_val,semiseg]", f"eval_data={data}"))
    assert set(metrics["eval_sets"]) == {"covid_ct_test", "covid_ct_val", "semiseg"}
    # the validation split as a set scores the selected checkpoint as training's validation did (its val/auroc)
    val_auroc = json.loads((out / "eval" / "covid_ct_val" / "metrics.json").read_text())["images"]["all"]["metrics"]["auroc"]["estimate"]
    assert metrics["best_val_metric"] == "val/auroc" and val_auroc == pytest.approx(metrics["best_val_score"], abs=1e-4)
    # the in-split test through evaluate's path gives the same P(COVID) as training's own test predictions
    with open(out / "predictions_test.csv", newline="") as f:
        own = {r["file"]: float(r["prob_covid"]) for r in csv.DictReader(f)}
    with open(out / "eval" / "covid_ct_test" / "predictions.csv", newline="") as f:
        ext = {Path(r["path"]).name: float(r["prob_covid"]) for r in csv.DictReader(f)}
    assert own.keys() == ext.keys()
    assert max(abs(own[k] - ext[k]) for k in own) < 1e-5
    test_auroc = json.loads((out / "eval" / "covid_ct_test" / "metrics.json").read_text())["images"]["all"]["metrics"]["auroc"]["estimate"]
    assert test_auroc == pytest.approx(metrics["test"]["test/auroc"], abs=1e-4)
    assert json.loads((out / "eval" / "semiseg" / "metrics.json").read_text())["n_images"] == 5


def test_old_sweeps_group_jobs_by_name_without_seed_and_pair_inits_with_scratch(tmp_path):
    from covidnet.trained.external_summary import main, sweep_groups

    for job in ("init=scratch,model.arch=resnet18,seed=0", "init=scratch,model.arch=resnet18,seed=1", "init=ct,model.arch=resnet18,seed=0"):
        (tmp_path / job).mkdir()
        (tmp_path / job / "metrics.json").write_text("{}")
    (tmp_path / "not_a_job").mkdir()
    groups, pairs = sweep_groups(tmp_path)
    assert {k: len(v) for k, v in groups.items()} == {"init=scratch,model.arch=resnet18": 2, "init=ct,model.arch=resnet18": 1}
    assert pairs == [("init=ct,model.arch=resnet18", "init=scratch,model.arch=resnet18")]
    assert main([str(tmp_path)]) == 1  # no eval/<set>/ anywhere: says how to make them


# --- evaluation sees what training saw ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chest_root(tmp_path_factory) -> Path:
    """Axial slices with lungs, a frame and a caption (tests/synthetic.py): lung fields change the input."""
    root = tmp_path_factory.mktemp("chest") / "covid-ct"
    make_dataset(root, {"train": 8, "val": 4, "test": 4}, kind="chest")
    return root


def read_probs(path: Path, key: str) -> dict[str, str]:
    with open(path, newline="") as f:
        return {Path(r[key]).name: r["prob_covid"] for r in csv.DictReader(f)}


@pytest.mark.parametrize("field", ["full", "lung_crop", "lung_only"])
@pytest.mark.parametrize("intensity", ["none", "lung_percentile"])
def test_evaluate_py_gives_the_runs_own_test_probabilities(chest_root, tmp_path, field, intensity):
    """A model trained with a lung field and intensity is scored by evaluate.py (and by training's eval_sets)
    on the images it saw, as it saw them: the official test split gives the run's predictions_test.csv, digit
    for digit, under the run's precision (bf16 where the CPU has it), and metrics.json says so."""
    from train_configs import compose_cfg

    from covidnet.apps.train import train

    run = tmp_path / "run"
    metrics = train(compose_cfg([
        f"data.root={chest_root}", f"paths.output_dir={run}", "experiment=smoke", f"data.field={field}",
        f"data.intensity={intensity}", "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
        "++callbacks.cam=null", "eval_sets=[covid_ct_test]", f"eval_data={chest_root.parent}"]))
    if field != "full":
        assert metrics["lung_fallbacks"]["n"] == 0  # every slice cropped: the test is about cropped inputs
    own = read_probs(run / "predictions_test.csv", "file")
    assert read_probs(run / "eval" / "covid_ct_test" / "predictions.csv", "path") == own
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt={run}", "eval=[covid_ct_test]", f"eval.covid_ct_test.root={chest_root}",
                                             f"out_dir={tmp_path / 'out'}", "n_boot=200", "progress=false"])
    evaluate(cfg)
    out = next((tmp_path / "out").glob("*/covid_ct_test"))
    assert read_probs(out / "predictions.csv", "path") == own
    recorded = json.loads((out / "metrics.json").read_text())
    assert recorded["input_spec"] == metrics["input_spec"] == {
        "image_size": 64, "normalization": "imagenet", "field": field, "intensity": intensity, "crop_margin": 0.05}
    assert recorded["precision"]["precision"] == metrics["hardware"]["precision"]
    assert recorded["precision"]["channels_last"] == metrics["hardware"]["channels_last"]
