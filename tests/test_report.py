"""Sweep report (covidnet.report), its statistics (covidnet.metrics.stats) and the end-of-sweep Hydra hook."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from PIL import Image
from fake_runs import fake_job, read_rows
from synthetic import make_dataset
from torchvision.models import resnet18

from covidnet.metrics import arm_stats, metric_registry, stats
from reference_metrics import auroc_by_pairs
from covidnet.apps.hydra_callbacks import SweepReport
from covidnet.report import load_sweep, main, read_curves, write_report

ROOT = Path(__file__).resolve().parents[1]
N_BOOT = 400


# --- an independent implementation of the bootstrap, for comparison -------------------------------------


def percentile_by_hand(values, q: float) -> float:
    """Linear interpolation between order statistics (numpy's default method), written out."""
    v = sorted(values)
    pos = (len(v) - 1) * q / 100
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def test_bootstrap_interval_matches_a_loop_implementation():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 30)
    probs = np.round(np.clip(0.3 * labels + rng.random(30) * 0.7, 0, 1), 2)  # rounded: ties occur
    seed = 3
    got = stats.bootstrap_metrics(labels, probs, n_boot=N_BOOT, seed=seed)

    # the documented protocol: row b of default_rng(seed).integers(0, n, size=(n_boot, n)) is resample b
    rows = np.random.default_rng(seed).integers(0, len(labels), size=(N_BOOT, len(labels)))
    aurocs, accs = [], []
    for row in rows:
        y = [int(labels[i]) for i in row]
        p = [float(probs[i]) for i in row]
        a = auroc_by_pairs(y, p)
        if not math.isnan(a):
            aurocs.append(a)
        accs.append(sum((pi > 0.5) == (yi == 1) for yi, pi in zip(y, p)) / len(y))
    assert got["auroc"].estimate == pytest.approx(auroc_by_pairs(labels, probs), abs=1e-12)
    assert got["auroc"].n_undefined == N_BOOT - len(aurocs)
    assert (got["auroc"].low, got["auroc"].high) == pytest.approx((percentile_by_hand(aurocs, 2.5), percentile_by_hand(aurocs, 97.5)), abs=1e-12)
    assert (got["acc"].low, got["acc"].high) == pytest.approx((percentile_by_hand(accs, 2.5), percentile_by_hand(accs, 97.5)), abs=1e-12)


def test_accuracy_interval_matches_the_binomial_closed_form():
    """Resampling n images of which k are right makes the resampled accuracy Binomial(n, k/n)/n."""
    n, k = 100, 80
    labels = np.ones(n, int)
    probs = np.r_[np.full(k, 0.9), np.full(n - k, 0.1)]
    iv = stats.bootstrap_metrics(labels, probs, n_boot=4000, seed=0)["acc"]
    cdf = np.cumsum([math.comb(n, j) * 0.8**j * 0.2 ** (n - j) for j in range(n + 1)])
    low, high = np.searchsorted(cdf, 0.025) / n, np.searchsorted(cdf, 0.975) / n
    assert iv.estimate == 0.8
    assert iv.low == pytest.approx(low, abs=0.011) and iv.high == pytest.approx(high, abs=0.011)


def test_paired_difference_matches_a_loop_and_is_zero_for_identical_arms():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 24)
    a = rng.random((2, 24)) * 0.5 + 0.5 * labels  # two seeds, informative
    b = rng.random((3, 24))  # three seeds, uninformative
    got = arm_stats.paired_difference(labels, a, b, ("auroc", "acc"), n_boot=200, seed=5)
    rows = np.random.default_rng(5).integers(0, 24, size=(200, 24))
    diffs = []
    for row in rows:
        mean_a = np.mean([auroc_by_pairs(labels[row], p[row]) for p in a])
        mean_b = np.mean([auroc_by_pairs(labels[row], p[row]) for p in b])
        if not math.isnan(mean_a - mean_b):
            diffs.append(mean_a - mean_b)
    point = np.mean([auroc_by_pairs(labels, p) for p in a]) - np.mean([auroc_by_pairs(labels, p) for p in b])
    assert got["auroc"].estimate == pytest.approx(point, abs=1e-12)
    assert (got["auroc"].low, got["auroc"].high) == pytest.approx((percentile_by_hand(diffs, 2.5), percentile_by_hand(diffs, 97.5)), abs=1e-12)
    same = arm_stats.paired_difference(labels, a, a.copy(), n_boot=50)
    assert (same["auroc"].low, same["auroc"].high, same["acc"].low, same["acc"].high) == (0, 0, 0, 0)


# --- a sweep written by the pipeline's own code on tiny data ---------------------------------------------
# Not under test here, and slow on a shared CPU: the CAM logger and every checkpoint but the best one
# (`++` sets a key whether or not the callbacks config has it).
COMMON = ["experiment=smoke", "data.image_size=32", "trainer.max_epochs=1", "++callbacks.cam=null", "++callbacks.step_checkpoint=null",
          "callbacks.model_checkpoint.save_last=false"]
EXCLUDE = ["data.root", "paths.log_dir", "ckpt_path"]


def job_name(overrides: list[str]) -> str:
    return ",".join(sorted(o for o in overrides if o.split("=")[0] not in EXCLUDE))


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory) -> Path:
    """2 inits x 2 seeds trained by covidnet.apps.train; a job with no metrics.json; one never started.

    Laid out as Hydra lays out a sweep (multirun.yaml, <job>/.hydra/{overrides,config}.yaml). ImageNet
    weights are a stand-in resnet18 state dict in a temporary TORCH_HOME.
    """
    from covidnet.apps.train import train

    tmp = tmp_path_factory.mktemp("sweep")
    data = tmp / "covid-ct"
    make_dataset(data, {"train": 4, "val": 2, "test": 5})
    torch_home = tmp / "torch"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(resnet18().state_dict(), torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    sweep = tmp / "multiruns" / "stamp"
    sweep.mkdir(parents=True)
    task = ["init=scratch,imagenet", "seed=0,1,2", f"data.root={data}", *COMMON]
    OmegaConf.save({"hydra": {"overrides": {"task": task}, "job": {"config": {"override_dirname": {"exclude_keys": EXCLUDE}}}}}, sweep / "multirun.yaml")

    old_home, old_threads = os.environ.get("TORCH_HOME"), torch.get_num_threads()
    os.environ["TORCH_HOME"] = str(torch_home)
    torch.set_num_threads(1)  # on a shared 2-core machine, two threads per tiny step are ~20x slower than one
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            for init in ("scratch", "imagenet"):
                for seed in (0, 1):
                    overrides = [f"init={init}", f"seed={seed}", f"data.root={data}", *COMMON]
                    job = sweep / job_name(overrides)
                    cfg = compose("train", overrides=[*overrides, f"paths.output_dir='{job}'"])
                    (job / ".hydra").mkdir(parents=True)
                    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
                    OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
                    train(cfg)
    finally:
        torch.set_num_threads(old_threads)
        os.environ.pop("TORCH_HOME") if old_home is None else os.environ.__setitem__("TORCH_HOME", old_home)
    # a job that started but wrote no results (failed without a record, or killed)
    interrupted = sweep / job_name(["init=imagenet", "seed=2", *COMMON])
    (interrupted / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(["init=imagenet", "seed=2", f"data.root={data}", *COMMON]), interrupted / ".hydra" / "overrides.yaml")
    return sweep


def test_report_on_a_pipeline_sweep(tiny_sweep, tmp_path):
    report = write_report(tiny_sweep, n_boot=N_BOOT)
    text = report.read_text()

    # one summary row per init, scratch first, with the two complete seeds and the missing one counted
    summary = read_rows(tiny_sweep / "summary.csv")
    assert [(r["init"], r["runs"], r["not complete"], r["seeds"]) for r in summary] == [("scratch", "2", "1", "0 1"), ("imagenet", "2", "1", "0 1")]

    # per-run values are recomputed from predictions_test.csv and agree with what training logged
    runs = {r["job"]: r for r in read_rows(tiny_sweep / "runs.csv")}
    complete = [r for r in runs.values() if r["status"] == "complete"]
    assert len(complete) == 4
    for r in complete:
        logged = json.loads((tiny_sweep / r["job"] / "metrics.json").read_text())["test"]
        for m in metric_registry.keys():
            assert float(r[m]) == pytest.approx(logged[f"test/{m}"], abs=2e-3), (r["job"], m)
            assert float(r[f"{m}_low"]) <= float(r[m]) <= float(r[f"{m}_high"])
    for row in summary:
        seeds = [r for r in complete if r["init"] == row["init"]]
        assert float(row["auroc_mean"]) == pytest.approx(np.mean([float(r["auroc"]) for r in seeds]))
        assert float(row["auroc_std"]) == pytest.approx(np.std([float(r["auroc"]) for r in seeds], ddof=1))

    # the paired comparison: its estimate is the difference of the seed means
    sweep = load_sweep(tiny_sweep)
    assert sweep.factors == ["init"]
    diff = float(summary[1]["auroc_mean"]) - float(summary[0]["auroc_mean"])
    (row,) = [line for line in text.splitlines() if line.startswith("| all runs | imagenet − scratch |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:5] == ["2 / 2", "yes", "10"]  # runs per arm, paired by seed (both ran seeds 0 and 1), paired test images
    # two seeds per arm: the estimate, no seed-aware interval and no verdict; the fixed-model interval labelled as such
    assert float(cells[5].split(" ")[0]) == pytest.approx(diff, abs=6e-4)
    assert cells[5].endswith("(not enough seeds)") and cells[6] == "not enough seeds to judge"
    assert float(cells[7].split(" [")[0]) == pytest.approx(diff, abs=6e-4)
    low, high = (float(v) for v in cells[7].split(" [")[1].rstrip("]").split(", "))
    (sentence,) = [line for line in text.splitlines() if line.startswith("- ") and "AUROC: imagenet" in line]
    assert "not enough seeds to judge" in sentence and "no claim about imagenet against scratch" in sentence
    assert f"For these trained models (test images resampled only): {low:+.3f} to {high:+.3f}." in sentence

    # failed and missing jobs are listed, not dropped
    problems = text.split("## Failed, interrupted or missing jobs")[1].split("## Figures")[0]
    assert "incomplete" in problems and "init=imagenet" in problems and "seed=2" in problems
    assert "not started" in problems and "init=scratch" in problems
    assert {r["status"] for r in runs.values()} == {"complete", "incomplete", "not started"}

    # figures: real PNGs; no data-efficiency curve when data.fraction was not swept
    for name in ("roc.png", "learning_curves.png"):
        with Image.open(tiny_sweep / name) as im:
            assert im.format == "PNG" and min(im.size) > 100
        assert f"]({name})" in text
    assert not (tiny_sweep / "data_efficiency.png").exists()

    # rebuilt from its predictions alone (no job directory): the same report, learning curves from jobs.json
    for name in REPORT_FILES:
        shutil.copy(tiny_sweep / name, tmp_path / name)
    assert without_stamp(write_report(tmp_path, from_predictions=True).read_text()) == without_stamp(text)
    with Image.open(tmp_path / "learning_curves.png") as im:
        assert im.format == "PNG"


def test_learning_curves_come_from_the_tensorboard_events(tiny_sweep):
    job = next(p for p in sorted(tiny_sweep.iterdir()) if (p / "metrics.json").is_file())
    curves = read_curves(job)
    assert [e for e, _ in curves["val/auroc"]] == [0] and [e for e, _ in curves["val/loss"]] == [0]
    assert curves["val/auroc"][0][1] == pytest.approx(json.loads((job / "metrics.json").read_text())["best_val_score"], abs=1e-6)


def test_cam_numbers_per_init_from_visualize(tiny_sweep):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # 32 px images: layer4 (stride 32) gives 1x1 maps, which localise nothing; layer2 (stride 8) gives 4x4
        text = write_report(tiny_sweep, cam=True, n_boot=50, cam_overrides=["n_per_class=1", "methods=[gradcam]", "layer=layer2"]).read_text()
        again = write_report(tiny_sweep, cam=True, n_boot=50, cam_overrides=["n_per_class=1", "methods=[gradcam]", "layer=layer2"]).read_text()
    finally:
        torch.set_num_threads(threads)
    section = text.split("## Class activation maps")[1]
    rows = [line for line in section.splitlines() if line.startswith("| scratch") or line.startswith("| imagenet")]
    assert len(rows) == 2 and all(" 2 | " in r for r in rows)  # two runs per init
    results = json.loads((tiny_sweep / "cam" / "results.json").read_text())
    assert len(results["models"]) == 4 and results["methods"] == ["gradcam"]
    scratch = [n for n, m in results["models"].items() if m["init"] == "scratch"]
    drops = [results["faithfulness"][n]["gradcam"]["prob_drop"]["mean"] for n in scratch]
    assert f"{np.mean(drops):.3f} ± {np.std(drops, ddof=1):.3f}" in rows[0]
    # the second report reuses the CAM results of the same checkpoints instead of computing (or overwriting) them
    assert not (tiny_sweep / "cam-2").exists() and again.split("## Class activation maps")[1] == section


def test_recorded_failures_are_shown(tmp_path):
    """A job that failed shows the error recorded by the sweep callback or passed by the caller."""
    from hydra.types import RunMode

    fake_job(tmp_path / "init=scratch,seed=0", ["init=scratch", "seed=0"], [0, 1, 0, 1], [0.2, 0.7, 0.4, 0.9])
    failed = tmp_path / "init=imagenet,seed=0"
    (failed / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(["init=imagenet", "seed=0"]), failed / ".hydra" / "overrides.yaml")
    silent = tmp_path / "init=imagenet,seed=1"
    (silent / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(["init=imagenet", "seed=1"]), silent / ".hydra" / "overrides.yaml")
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "runtime": {"output_dir": str(failed)},
                                      "job": {"override_dirname": failed.name, "num": 1}}})
    cfg.hydra.mode = RunMode.MULTIRUN
    SweepReport(enabled=False).on_job_end(cfg, JobReturn(status=JobStatus.FAILED, _return_value=ValueError("bad weights")))
    sweep = load_sweep(tmp_path, failures={str(silent.resolve()): "RuntimeError: boom"})
    status = {r.name: (r.status, r.message) for r in sweep.runs}
    assert status[failed.name] == ("failed", "ValueError: bad weights")
    assert status[silent.name] == ("failed", "RuntimeError: boom")
    assert status["init=scratch,seed=0"][0] == "complete"
    # a sweep copied elsewhere (e.g. into docs/) keeps its recorded errors
    moved = shutil.copytree(tmp_path, tmp_path.parent / f"{tmp_path.name}-moved")
    assert {r.name: r.status for r in load_sweep(moved).runs}[failed.name] == "failed"


def test_unreadable_results_are_listed_and_the_rest_reported(tmp_path):
    fake_job(tmp_path / "init=scratch,seed=0", ["init=scratch", "seed=0"], [0, 1, 0, 1], [0.2, 0.7, 0.4, 0.9])
    fake_job(tmp_path / "init=scratch,seed=1", ["init=scratch", "seed=1"], [0, 1], [0.1, 0.8])
    (tmp_path / "init=scratch,seed=1" / "predictions_test.csv").write_text("file,label\nimg0.png,1\n")
    text = write_report(tmp_path, n_boot=50).read_text()
    problems = text.split("## Failed")[1]
    assert "init=scratch,seed=1 | unreadable |" in problems and "prob_covid" in problems
    assert read_rows(tmp_path / "summary.csv")[0]["runs"] == "1"


def test_data_fraction_sweep_gets_rows_comparisons_and_a_data_efficiency_curve(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    for init in ("scratch", "imagenet"):
        for fraction in ("0.25", "1.0"):
            for seed in (0, 1):
                skill = float(fraction) * (0.8 if init == "imagenet" else 0.5)
                probs = np.clip(skill * labels + (1 - skill) * rng.random(40), 0, 1)
                fake_job(tmp_path / f"data.fraction={fraction},init={init},seed={seed}", [f"init={init}", f"data.fraction={fraction}", f"seed={seed}"],
                         labels, probs, {"init": init, "seed": seed, "train_images": int(40 * float(fraction))})
    assert main([str(tmp_path), "--n-boot", "200"]) == 0
    summary = read_rows(tmp_path / "summary.csv")
    assert [(r["init"], r["data.fraction"]) for r in summary] == [("scratch", "0.25"), ("scratch", "1.0"), ("imagenet", "0.25"), ("imagenet", "1.0")]
    text = (tmp_path / "report.md").read_text()
    table = text.split("## Paired differences")[1].split("## Runs")[0]
    assert "data.fraction=0.25" in table and "data.fraction=1.0" in table
    with Image.open(tmp_path / "data_efficiency.png") as im:
        assert im.format == "PNG"
    assert not (tmp_path / "learning_curves.png").exists()  # these fake jobs have no TensorBoard events


def test_a_directory_without_jobs_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no job directories" in capsys.readouterr().err


def test_failed_job_makes_the_callback_write_the_report(tiny_sweep, tmp_path):
    """Hydra skips on_multirun_end after a failed job, so the callback reports at each job end from then on."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    src = next(p for p in sorted(tiny_sweep.iterdir()) if (p / "metrics.json").is_file())
    fake_job(sweep / "init=scratch,seed=0", ["init=scratch", "seed=0"], *zip(*[(int(r["label"]), float(r["prob_covid"])) for r in read_rows(src / "predictions_test.csv")]))
    (sweep / "init=imagenet,seed=0" / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(["init=imagenet", "seed=0"]), sweep / "init=imagenet,seed=0" / ".hydra" / "overrides.yaml")
    cfg = OmegaConf.create({"task_name": "train", "hydra": {"mode": "MULTIRUN", "sweep": {"dir": str(sweep)}, "runtime": {"output_dir": str(sweep / "init=imagenet,seed=0")}}})
    from hydra.types import RunMode

    cfg.hydra.mode = RunMode.MULTIRUN
    callback = SweepReport(n_boot=100)
    callback.on_job_end(cfg, JobReturn(status=JobStatus.COMPLETED))
    assert not (sweep / "report.md").exists()  # no failure yet: the end of the multirun writes it
    callback.on_job_end(cfg, JobReturn(status=JobStatus.FAILED, _return_value=FileNotFoundError("weights missing")))
    problems = (sweep / "report.md").read_text().split("## Failed")[1]
    assert "failed" in problems and "FileNotFoundError: weights missing" in problems


def test_end_of_sweep_hook_fires_on_a_real_multirun(synthetic_root, tmp_path):
    logs = tmp_path / "logs"
    cmd = [sys.executable, "train.py", "-m", "init=scratch", "seed=0,1", f"data.root={synthetic_root}", f"paths.log_dir={logs}", *COMMON]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see tiny_sweep
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (logs / "train" / "multiruns").iterdir()
    text = (sweep / "report.md").read_text()
    assert "Jobs: 2 (2 complete)" in text and "seed=0,1" in text
    assert [(r["init"], r["runs"]) for r in read_rows(sweep / "summary.csv")] == [("scratch", "2")]
    assert (sweep / "roc.png").is_file() and (sweep / "learning_curves.png").is_file()


def test_a_job_without_a_best_checkpoint_is_not_trained_never_complete(tmp_path):
    """metrics.json from a run that selected no checkpoint (max_epochs=0) has no test result."""
    fake_job(tmp_path / "init=scratch,seed=0", ["init=scratch", "seed=0"], [0, 1, 0, 1], [0.2, 0.7, 0.4, 0.9])
    fake_job(tmp_path / "init=scratch,seed=1", ["init=scratch", "seed=1"], [0, 1, 0, 1], [0.6, 0.7, 0.4, 0.9],
             {"best_checkpoint": None, "epochs_trained": 0})
    text = write_report(tmp_path, n_boot=50).read_text()
    assert read_rows(tmp_path / "summary.csv")[0]["runs"] == "1"
    runs = {r["job"]: r["status"] for r in read_rows(tmp_path / "runs.csv")}
    assert runs == {"init=scratch,seed=0": "complete", "init=scratch,seed=1": "not trained"}
    problems = text.split("## Failed, interrupted or missing jobs")[1]
    assert "| init=scratch,seed=1 | not trained |" in problems and "no best checkpoint" in problems


def test_keys_that_do_not_name_a_job_are_no_factors_without_multirun_yaml(tmp_path):
    """The report's non-factor keys are Hydra's exclude_keys (one list): a copied sweep without multirun.yaml
    whose jobs differ only in where they ran has one row, not one per device count."""
    fake_job(tmp_path / "a", ["init=scratch", "seed=0", "trainer.devices=1"], [0, 1, 0, 1], [0.2, 0.7, 0.4, 0.9])
    fake_job(tmp_path / "b", ["init=scratch", "seed=1", "trainer.devices=2"], [0, 1, 0, 1], [0.3, 0.7, 0.4, 0.9])
    assert load_sweep(tmp_path).factors == ["init"]


def test_a_section_builder_added_to_the_list_writes_its_section_and_columns(tmp_path, monkeypatch):
    """The hook for column groups others add (external sets, per-source metrics): one builder in SECTIONS."""
    from covidnet.report import sections
    from covidnet.report.render import Section

    def external(ctx):
        groups = ctx.group_runs()
        for row, runs in zip(ctx.summary, groups.values()):
            row["ext_auroc_mean"] = float(np.mean([r.points["auroc"] for r in runs]))
        for row in ctx.runs:
            row["ext_sets"] = ",".join(s for r in ctx.sweep.runs if r.name == row["job"] and r.run_dir for s in r.run_dir.eval_sets())
        return Section("External sets", [f"{len(groups)} group(s)"])

    def broken(ctx):
        raise RuntimeError("this builder has a bug")

    # right after the summary (the built-in per-source and external sections write nothing for this sweep)
    at = sections.SECTIONS.index(sections.summary_section) + 1
    monkeypatch.setattr(sections, "SECTIONS", [*sections.SECTIONS[:at], external, broken, *sections.SECTIONS[at:]])
    fake_job(tmp_path / "init=scratch,seed=0", ["init=scratch", "seed=0"], [0, 1, 0, 1], [0.2, 0.7, 0.4, 0.9])
    text = write_report(tmp_path, n_boot=50).read_text()
    titles = [line for line in text.splitlines() if line.startswith("## ")]
    assert titles[0] == "## What ran" and titles[1].startswith("## Summary") and titles[2:4] == ["## External sets", "## Broken"]
    assert "Not written: RuntimeError: this builder has a bug" in text  # costs its own section only
    assert float(read_rows(tmp_path / "summary.csv")[0]["ext_auroc_mean"]) == 1.0
    assert "ext_sets" in read_rows(tmp_path / "runs.csv")[0]


def test_sweep_jobs_expected_by_multirun_yaml_without_hydras_private_sweeper(tmp_path):
    from covidnet.report.sweep import expand_sweep

    jobs, swept = expand_sweep(["init=scratch,imagenet", "seed=range(2)", "data.root=/x", "seed=0,1,2"])
    assert swept == {"init", "seed"}
    assert jobs[:4] == [["init=scratch", "seed=0", "data.root=/x"], ["init=scratch", "seed=1", "data.root=/x"],
                        ["init=scratch", "seed=2", "data.root=/x"], ["init=imagenet", "seed=0", "data.root=/x"]]
    assert len(jobs) == 6  # a later override of a key replaces an earlier one, as in Hydra


def test_jobs_with_several_test_sources_get_a_section_per_source(tmp_path):
    def block(auroc: float) -> dict:
        return {"metrics": {"auroc": {"estimate": auroc}, "sensitivity": {"estimate": 0.5}, "specificity": {"estimate": 0.5}}}

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 30)
    for sources, md in (("[covid_ct]", 0.5), ("[covid_ct,md]", 0.8)):
        for seed in (0, 1):
            by_source = {"covid_ct": {"images": {"all": block(0.7)}},
                         "md": {"images": {"all": block(md + 0.02 * seed)}, "infected_slices": block(md), "patients": {"mean": {"all": block(1.0)}}}}
            fake_job(tmp_path / f"data.sources={sources},seed={seed}", [f"data.sources={sources}", f"seed={seed}"], labels, rng.random(30),
                     {"init": "scratch", "seed": seed, "test_by_source": by_source})
    assert main([str(tmp_path), "--n-boot", "50"]) == 0
    text = (tmp_path / "report.md").read_text()
    section = text.split("## Each test source on its own")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| scratch | [covid_ct")]
    assert len(rows) == 4  # two groups x two sources
    md_mixed = next(r for r in rows if r.startswith("| scratch | [covid_ct,md] | md |"))
    assert "0.810 ± 0.014" in md_mixed and "1.000" in md_mixed  # seed-mean AUROC of md, and its patient AUROC
    assert "0.510 ± 0.014" in next(r for r in rows if r.startswith("| scratch | [covid_ct] | md |"))
    assert "| – | – |" in next(r for r in rows if r.startswith("| scratch | [covid_ct] | covid_ct |"))  # no patients on COVID-CT


def test_runs_evaluated_on_an_external_set_get_its_column_group(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 30)
    ext_labels = np.array([1] * 6 + [0] * 6)
    patients = ["c1"] * 3 + ["c2"] * 3 + ["n1"] * 3 + ["n2"] * 3

    def block(v):
        return {"metrics": {m: {"estimate": v} for m in ("auroc", "acc", "sensitivity", "specificity")}, "mean_prob_covid": {"estimate": 0.5}}

    for init, skill in (("scratch", 0.0), ("ct", 0.6)):
        for seed in (0, 1):
            job = tmp_path / f"init={init},seed={seed}"
            fake_job(job, [f"init={init}", f"seed={seed}"], labels, rng.random(30), {"init": init, "seed": seed})
            out = job / "eval" / "md"
            out.mkdir(parents=True)
            probs = np.clip(skill * ext_labels + (1 - skill) * rng.random(12), 0, 1)
            (out / "metrics.json").write_text(json.dumps({"kind": "dicom", "n_images": 12, "n_patients": 4,
                                                         "images": {"all": block(0.9 if init == "ct" else 0.5)},
                                                         "patients": {"mean": {"all": block(1.0)}}}))
            with open(out / "predictions.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["path", "patient", "label", "prob_covid"])
                w.writerows((f"s{i}.dcm", p, y, f"{q:.4f}") for i, (p, y, q) in enumerate(zip(patients, ext_labels, probs)))
    assert main([str(tmp_path), "--n-boot", "50"]) == 0
    text = (tmp_path / "report.md").read_text()
    section = text.split("## External sets")[1].split("\n## ")[0]
    assert "### md (dicom, 12 images of 4 patients)" in section
    assert "| init=ct | 2 | 0.900 ± 0.000" in section and "| init=scratch | 2 | 0.500 ± 0.000" in section
    at = section.index("- init=ct − init=scratch on the same 12 images (patients resampled), 2 / 2 runs, paired by seed:")
    pair = section[at:].split("\n\n")[0].splitlines()
    assert [line.split()[2] for line in pair[1:]] == ["auroc", "acc", "sensitivity"]
    assert all(": not enough seeds to judge; for these trained models " in line for line in pair[1:])  # two seeds per arm


def setting_sweep(tmp_path: Path) -> Path:
    """data.field=lung_crop,full x aug=none,on x seeds 0-2 (full skilled, lung_crop not), each job evaluated on an
    external set "md" of 12 images."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 40)
    ext_labels = np.array([1] * 6 + [0] * 6)
    OmegaConf.save({"hydra": {"overrides": {"task": ["data.field=lung_crop,full", "aug=none,on", "seed=0,1,2"]},
                              "job": {"config": {"override_dirname": {"exclude_keys": []}}}}}, tmp_path / "multirun.yaml")
    for field_, skill in (("lung_crop", 0.0), ("full", 0.7)):
        for aug in ("none", "on"):
            for seed in (0, 1, 2):
                job = tmp_path / f"aug={aug},data.field={field_},seed={seed}"
                probs = np.clip(skill * labels + (1 - skill) * rng.random(40), 0, 1)
                fake_job(job, [f"data.field={field_}", f"aug={aug}", f"seed={seed}"], labels, probs, {"init": "scratch", "seed": seed})
                out = job / "eval" / "md"
                out.mkdir(parents=True)
                (out / "metrics.json").write_text(json.dumps({"kind": "dicom", "n_images": 12, "n_patients": 0, "images": {"all": {}}}))
                ext = np.clip(skill * ext_labels + (1 - skill) * rng.random(12), 0, 1)
                with open(out / "predictions.csv", "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(["path", "patient", "label", "prob_covid"])
                    w.writerows((f"s{i}.dcm", "", y, f"{q:.4f}") for i, (y, q) in enumerate(zip(ext_labels, ext)))
    return tmp_path


def test_a_swept_setting_is_compared_with_the_first_value_the_sweep_lists(tmp_path):
    """Not only inits: data.field=full,lung_crop gets lung_crop − full (in-split and external), paired, with
    the other factor held fixed; the reference is the first value typed, not the alphabetically first."""
    setting_sweep(tmp_path)
    assert main([str(tmp_path), "--n-boot", "200"]) == 0
    text = (tmp_path / "report.md").read_text()
    paired = text.split("## Paired differences")[1].split("\n## ")[0]
    assert "References: init: scratch, aug: none, data.field: lung_crop." in paired
    rows = [line for line in paired.splitlines() if "data.field=full − data.field=lung_crop" in line]
    assert len(rows) == 2 and all("aug=" in r for r in rows)  # once per level of the other factor
    # skill 0.7 vs none in every seed: the interval over seeds and images excludes 0
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in rows]
    assert all(c[2:4] == ["3 / 3", "yes"] and c[6] == "better" for c in cells)
    assert all(float(c[5].split(" [")[1].split(",")[0]) > 0 for c in cells)
    assert "data.field=full is better than data.field=lung_crop (the interval excludes zero)" in paired
    assert sum("aug=on − aug=none" in line for line in paired.splitlines()) == 2
    external = text.split("## External sets")[1].split("\n## ")[0]
    assert "- init=scratch,aug=none,data.field=full − init=scratch,aug=none,data.field=lung_crop on the same 12 images (images resampled), " \
           "3 / 3 runs, paired by seed:" in external
    assert "- init=scratch,aug=on,data.field=lung_crop − init=scratch,aug=none,data.field=lung_crop on the same 12 images" in external


def test_seeds_that_disagree_leave_a_difference_unresolved_that_the_fixed_models_seem_to_show(tmp_path):
    """Three imagenet seeds of very different skill against three similar scratch seeds: on 200 images the fixed
    models differ clearly, but with two bad seeds in three the setting's gain is unresolved; the report says so."""
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], 100)
    for init, skills in (("scratch", (0.1, 0.1, 0.1)), ("imagenet", (0.02, 0.9, 0.02))):
        for seed, skill in enumerate(skills):
            probs = np.clip(skill * labels + (1 - skill) * rng.random(labels.size), 0, 1)
            fake_job(tmp_path / f"init={init},seed={seed}", [f"init={init}", f"seed={seed}"], labels, probs, {"init": init, "seed": seed})
    assert main([str(tmp_path), "--n-boot", "300", "--margin", "auroc=0.05"]) == 0
    text = (tmp_path / "report.md").read_text()
    (row,) = [line for line in text.splitlines() if line.startswith("| all runs | imagenet − scratch |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    seeds = [float(v) for v in cells[5].split(" [")[1].rstrip("]").split(", ")]
    fixed = [float(v) for v in cells[7].split(" [")[1].rstrip("]").split(", ")]
    assert fixed[0] > 0 and seeds[0] < 0 < seeds[1] and cells[6] == "not resolved"
    assert "Equivalence margins: AUROC ±0.05." in text
    assert "and leaves the ±0.05 equivalence margin" in next(line for line in text.splitlines() if line.startswith("- AUROC: imagenet"))


REPORT_FILES = ("report.md", "summary.csv", "runs.csv", "predictions.csv", "jobs.json")


def without_stamp(text: str) -> str:
    """report.md without its first paragraph after the title (when and by which command it was written)."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("Written "))


def test_a_report_folder_rebuilds_from_its_predictions_alone(tmp_path):
    """The report folder carries predictions.csv (file, label, P(COVID) per job) and jobs.json; copied without any
    job directory, `--from-predictions` rewrites the same report, with the recorded bootstrap settings and margins."""
    sweep = setting_sweep(tmp_path / "sweep")
    assert main([str(sweep), "--n-boot", "150", "--seed", "3", "--margin", "auroc=0.05"]) == 0
    copy = tmp_path / "docs" / "results" / "fields"
    copy.mkdir(parents=True)
    for name in REPORT_FILES:
        shutil.copy(sweep / name, copy / name)
    with open(copy / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert list(rows[0])[:4] == ["set", "path", "label", "patient"] and sorted(list(rows[0])[4:]) == jobs
    assert [sum(r["set"] == s for r in rows) for s in ("test", "md")] == [40, 12]
    first = read_rows(sweep / jobs[0] / "predictions_test.csv")
    assert [float(r[jobs[0]]) for r in rows[:40]] == [float(r["prob_covid"]) for r in first]

    assert main([str(copy), "--from-predictions"]) == 0
    original, rebuilt = (sweep / "report.md").read_text(), (copy / "report.md").read_text()
    assert f"`python -m covidnet.report {sweep} --n-boot 150 --seed 3 --margin auroc=0.05`" in original
    # byte for byte: every table, interval and verdict, and the line saying when and how it was first written
    assert rebuilt == original
    assert "better" in rebuilt.split("## Paired differences")[1] and "Equivalence margins: AUROC ±0.05." in rebuilt
    for name in (*REPORT_FILES[1:], "report.json"):
        assert (copy / name).read_text() == (sweep / name).read_text(), name  # and the bundle rewrites itself unchanged
    assert (copy / "roc.png").is_file()
    # what ran: one command per distinct setting (seeds joined), the settings that differ, the machine and versions
    what_ran = rebuilt.split("## What ran")[1].split("\n## ")[0]
    assert "Training commands, one per distinct job setting" in what_ran and "seed=0,1,2" in what_ran
    assert "Versions (the environment that wrote the report from the job directories): python " in what_ran
    numbers = json.loads((copy / "report.json").read_text())
    assert numbers["comparisons"][0]["metrics"]["auroc"]["verdict"] in ("better", "worse", "equivalent", "not resolved")
    assert [row["runs"] for row in numbers["summary"]] == [int(r["runs"]) for r in read_rows(sweep / "summary.csv")]
    # asked for other settings, it uses them, and says it was written again
    assert main([str(copy), "--from-predictions", "--n-boot", "60"]) == 0
    again = (copy / "report.md").read_text()
    assert "on each of 60 draws" in again and f"`python -m covidnet.report --from-predictions {copy}`" in again


def test_rebuilding_needs_the_predictions(tmp_path, capsys):
    assert main([str(tmp_path), "--from-predictions"]) == 2
    assert "holds no predictions.csv and jobs.json" in capsys.readouterr().err


def test_per_arm_values_an_experiment_interpolates_are_reported_as_each_arm_used_them(tmp_path):
    """conf/experiment/lite224.yaml gives each arm its own values through ``${arms.${model.init}.<key>}``; Hydra saves
    the config unresolved. The report (and the README's answer box, which reads report.json) must show each arm's
    learning rate and weight average, and the shared backbone scale, never the interpolation text."""
    arms = {"scratch": {"lr": 0.03, "backbone_lr_scale": 1.0, "ema": {"_target_": "covidnet.callbacks.EMA", "decay": 0.98}},
            "imagenet": {"lr": 0.001, "backbone_lr_scale": 1.0, "ema": None}}
    labels = [0, 1] * 6
    for init in arms:
        for seed in (0, 1):
            job = tmp_path / f"init={init},seed={seed}"
            fake_job(job, [f"init={init}", f"seed={seed}"], labels, [0.3 + 0.3 * y + 0.01 * seed for y in labels])
            OmegaConf.save(OmegaConf.create({
                "arms": arms, "paths": {"output_dir": "${hydra:runtime.output_dir}"},
                "model": {"init": init, "backbone_lr_scale": "${arms.${model.init}.backbone_lr_scale}",
                          "optimizer": {"lr": "${arms.${model.init}.lr}"}},
                "callbacks": {"ema": "${arms.${model.init}.ema}"}}), job / ".hydra" / "config.yaml")
    assert main([str(tmp_path), "--n-boot", "100"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["model.backbone_lr_scale"] == "1.0"
    assert report["settings_by_row"] == {"init=scratch": {"model.optimizer.lr": "0.03", "callbacks.ema": "EMA(decay=0.98)"},
                                         "init=imagenet": {"model.optimizer.lr": "0.001", "callbacks.ema": "null"}}
    assert "${" not in (tmp_path / "report.md").read_text()
