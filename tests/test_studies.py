"""The study scripts (scripts/studies/): their claims come from the seed-aware interval, and a study's committed
predictions recompute its summary without the runs."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "studies" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_csv(path: Path, header: list[str], rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def job(path: Path, seed: int, fold: int = 0) -> Path:
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save({"data": {"fold": fold}}, path / ".hydra" / "config.yaml")
    (path / "metrics.json").write_text(json.dumps({"seed": seed}))
    return path


def two_sweeps(tmp: Path) -> tuple[Path, Path]:
    """A mixed sweep (2 folds x 3 seeds, each fold holding out two of four COVID-CT-MD patients) and a baseline sweep
    (3 seeds, evaluated on all four patients and on SemiSeg): the mixed arm is better on COVID-CT in every seed."""
    rng = np.random.default_rng(0)
    ct = [(f"ct{i}.png", i % 2) for i in range(60)]
    md = [(f"{p}/s{j}.dcm", p, int(p.startswith("c")), "COVID" if p.startswith("c") else "normal", str(j % 2))
          for p in ("c1", "c2", "n1", "n2") for j in range(4)]
    held_out = {0: {"c1", "n1"}, 1: {"c2", "n2"}}
    semi = [f"semi{i}.jpg" for i in range(10)]
    mixed, baseline = tmp / "mixed", tmp / "baseline"
    for seed in range(3):
        for fold in (0, 1):
            j = job(mixed / f"data.fold={fold},seed={seed}", seed, fold)
            rows = [(f, y, f"{np.clip(0.6 * y + 0.4 * rng.random(), 0, 1):.6f}", "covid_ct", "") for f, y in ct]
            rows += [(f"covid_ct_md/{k}", y, f"{rng.random():.6f}", "covid_ct_md", p) for k, p, y, _, _ in md if p in held_out[fold]]
            write_csv(j / "predictions_test.csv", ["file", "label", "prob_covid", "source", "patient"], rows)
            write_csv(j / "eval" / "semiseg" / "predictions.csv", ["path", "prob_covid"], [(k, f"{rng.random():.6f}") for k in semi])
        j = job(baseline / f"seed={seed}", seed)
        write_csv(j / "predictions_test.csv", ["file", "label", "prob_covid"],
                  [(f, y, f"{np.clip(0.1 * y + 0.9 * rng.random(), 0, 1):.6f}") for f, y in ct])
        write_csv(j / "eval" / "covid_ct_md" / "predictions.csv", ["path", "prob_covid", "patient", "label", "diagnosis", "slice_label"],
                  [(k, f"{rng.random():.6f}", p, y, d, sl) for k, p, y, d, sl in md])
        write_csv(j / "eval" / "semiseg" / "predictions.csv", ["path", "prob_covid"], [(k, f"{rng.random():.6f}") for k in semi])
    return mixed, baseline


def test_sources_study_verdicts_come_from_the_seed_aware_interval_and_rebuild_from_its_predictions(tmp_path, capsys):
    study = script("sources_study")
    mixed, baseline = two_sweeps(tmp_path)
    out = tmp_path / "out"
    study.main(["--mixed", str(mixed), "--baseline", str(baseline), "--out", str(out), "--n-boot", "200", "--margin", "auroc=0.05"])
    text = (out / "summary.md").read_text()
    result = json.loads((out / "summary.json").read_text())
    ct = result["levels"]["COVID-CT test (images)"]
    assert result["seeds"] == [0, 1, 2] and ct["delta"]["auroc"]["paired_by_seed"]
    assert ct["delta"]["auroc"]["verdict"] == "better" and ct["delta"]["auroc"]["low"] > 0
    # the seed-aware interval is at least as wide as the one for these trained models, and both are in the table
    fixed = ct["delta_for_these_trained_models"]["auroc"]
    assert ct["delta"]["auroc"]["estimate"] == fixed["estimate"]
    row = next(line for line in text.splitlines() if line.startswith("| COVID-CT test (images) |"))
    assert "| better |" in row and f"{fixed['low']:+.3f}, {fixed['high']:+.3f}]" in row
    assert "Δ AUROC [95 % CI over seeds and images] | verdict | Δ AUROC for these trained models" in text
    assert "here auroc ±0.05" in text
    assert len(result["semiseg_sensitivity"]["mixed"]) == 6 and len(result["semiseg_sensitivity"]["baseline"]) == 3

    # predictions.csv: file name, label and P(COVID) per run, enough to recompute the same summary without the sweeps
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [sum(r["set"] == s for r in rows) for s in ("covid_ct_test", "covid_ct_md", "semiseg")] == [60, 16, 10]
    copy = tmp_path / "committed"
    copy.mkdir()
    for name in ("predictions.csv", "summary.json"):
        shutil.copy(out / name, copy / name)
    shutil.rmtree(mixed)
    shutil.rmtree(baseline)
    capsys.readouterr()
    study.main(["--from-predictions", "--out", str(copy)])  # the recorded resamples and margins
    assert (copy / "summary.md").read_text() == text
    assert json.loads((copy / "summary.json").read_text()) == result
    assert (copy / "predictions.csv").read_text() == (out / "predictions.csv").read_text()


def test_rebuild_results_recomputes_every_folder_with_predictions_and_lists_the_others(tmp_path, capsys):
    from covidnet.report import write_report

    results = tmp_path / "results"
    sweep = results / "sweep"
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 10)
    for init in ("scratch", "imagenet"):
        for seed in range(3):
            j = sweep / f"init={init},seed={seed}"
            (j / ".hydra").mkdir(parents=True)
            OmegaConf.save(OmegaConf.create([f"init={init}", f"seed={seed}"]), j / ".hydra" / "overrides.yaml")
            (j / "metrics.json").write_text(json.dumps({"seed": seed, "init": init, "best_epoch": 1}))
            write_csv(j / "predictions_test.csv", ["file", "label", "prob_covid"], [(f"i{k}.png", y, f"{rng.random():.6f}") for k, y in enumerate(labels)])
    write_report(sweep, n_boot=50)
    for j in [p for p in sweep.iterdir() if p.is_dir()]:
        shutil.rmtree(j)  # what is committed: the report folder without its job directories
    (sweep / "summary.csv").unlink()
    study = script("sources_study")
    mixed, baseline = two_sweeps(tmp_path)
    study.main(["--mixed", str(mixed), "--baseline", str(baseline), "--out", str(results / "sources"), "--n-boot", "50"])
    (results / "sources" / "summary.md").write_text("stale\n")
    (results / "old").mkdir()
    (results / "old" / "report.md").write_text("# a report whose runs are gone\n")
    capsys.readouterr()

    rebuild = script("rebuild_results")
    assert rebuild.main([str(results), "--list"]) == 0
    listed = capsys.readouterr().out
    assert f"would rebuild (sweep report): {sweep}" in listed and f"would rebuild (sources study): {results / 'sources'}" in listed
    assert f"not recomputable (no predictions committed beside it): {results / 'old' / 'report.md'}" in listed
    assert not (sweep / "summary.csv").exists()
    assert rebuild.main([str(results)]) == 0
    assert [r["init"] for r in csv.DictReader(open(sweep / "summary.csv"))] == ["scratch", "imagenet"]
    assert "Several sources" in (results / "sources" / "summary.md").read_text()
    assert (results / "old" / "report.md").read_text() == "# a report whose runs are gone\n"


def test_external_study_tables_recompute_from_their_predictions(tmp_path):
    """Two groups from different sweeps (job names that repeat across them), evaluated on an external set with
    patients: the pair's seed-aware verdict, and the same markdown again from the predictions folder alone."""
    rng = np.random.default_rng(4)
    ct_labels = np.repeat([0, 1], 15)
    patients = [f"{d}{i}" for d in ("c", "n") for i in range(5)]  # 5 per class: the fewest with an interval
    md = [(f"{p}/s{j}.dcm", p, int(p.startswith("c")), "COVID" if p.startswith("c") else "normal") for p in patients for j in range(3)]
    for sweep, skill in (("a", 0.05), ("b", 0.8)):
        for seed in range(3):
            j = job(tmp_path / sweep / f"seed={seed}", seed)
            probs = np.clip(skill * ct_labels + (1 - skill) * rng.random(ct_labels.size), 0, 1)
            write_csv(j / "predictions_test.csv", ["file", "label", "prob_covid"], [(f"i{k}.png", y, f"{p:.6f}") for k, (y, p) in enumerate(zip(ct_labels, probs))])
            block = {"metrics": {m: {"estimate": 0.5} for m in ("auroc", "acc", "sensitivity", "specificity")}, "mean_prob_covid": {"estimate": 0.4}}
            (j / "metrics.json").write_text(json.dumps({"seed": seed, "test": {"test/auroc": 0.7, "test/acc": 0.6}}))
            out = j / "eval" / "covid_ct_md"
            out.mkdir(parents=True)
            (out / "metrics.json").write_text(json.dumps({"kind": "dicom", "root": "/somewhere/data", "n_images": len(md), "n_patients": 10,
                                                         "images": {"all": block, "COVID vs normal": block},
                                                         "patients": {"mean": {"all": block}, "top5_mean": {"all": block}}}))
            write_csv(out / "predictions.csv", ["path", "patient", "label", "diagnosis", "prob_covid"],
                      [(k, p, y, d, f"{np.clip(skill * y + (1 - skill) * rng.random(), 0, 1):.6f}") for k, p, y, d in md])
    study = script("external_study")
    first = tmp_path / "docs" / "external.md"
    study.main(["--group", f"scratch={tmp_path / 'a' / '*'}", "--group", f"ct={tmp_path / 'b' / '*'}", "--pair", "ct:scratch",
                "--margin", "auroc=0.05", "--n-boot", "100", "--out", str(first)])
    text = first.read_text()
    at = text.index("- ct − scratch on the same 30 images (patients resampled), 3 / 3 runs, paired by seed:")
    assert text[at:].splitlines()[1].startswith("  - Δ auroc +") and ": better; for these trained models +" in text[at:].splitlines()[1]
    bundle = tmp_path / "docs" / "external"
    with open(bundle / "predictions.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[:4] == ["set", "path", "label", "patient"] and sorted(header[4:]) == sorted(f"{g}/seed={s}" for g in ("ct", "scratch") for s in range(3))
    assert "/somewhere/data" not in (bundle / "jobs.json").read_text()  # the evaluating machine's data path is not kept

    shutil.rmtree(tmp_path / "a")
    shutil.rmtree(tmp_path / "b")
    again = tmp_path / "again.md"
    study.main(["--from-predictions", str(bundle), "--out", str(again)])
    assert again.read_text().splitlines()[:-1] == text.splitlines()[:-1]  # all but the line naming the command
    # the folder-wide rebuild finds it too, and rewrites the file beside its folder
    first.write_text("stale\n")
    assert script("rebuild_results").main([str(tmp_path / "docs")]) == 0
    assert first.read_text().splitlines()[:-1] == text.splitlines()[:-1]


def test_cam_summary_counts_empty_maps_and_gives_the_seed_and_slice_interval():
    cam_summary = script("cam_summary")
    rng = np.random.default_rng(0)

    def run(offset: float, empty: int) -> dict:
        mass = list(np.clip(rng.normal(0.10 + offset, 0.02, 30), 0, 1))
        mass[:empty] = [None] * empty
        hits = [float(x) for x in rng.random(30) < 0.2 + offset]
        per = {"mass_in_lesion": mass, "pointing_game_hit": hits}
        defined = [m for m in mass if m is not None]
        summary = {"pointing_game_hit_rate": {"mean": float(np.mean(hits)), "n": 30},
                   "mass_in_lesion": {"mean": float(np.mean(defined)), "n": len(defined)}, "mass_in_lungs": {"mean": 0.5, "n": 30}}
        return {"n_slices": 30, "grid": [14, 14], "lesion_area_share": {"mean": 0.14}, "lung_area": {"mean": 0.45},
                "gradcam": {**summary, "empty_maps": empty, "per_slice": per}}

    loc = {f"init={init},seed={s}": run(0.1 if init == "imagenet" else 0.0, 3 if init == "imagenet" else 0)
           for init in ("scratch", "imagenet") for s in range(5)}
    text = cam_summary.summarize({"methods": ["gradcam"], "localisation": loc}, n_boot=300)
    assert "CAM grid: 14x14 cells" in text
    assert "| imagenet | 5 | gradcam |" in text and "| 15 of 150 |" in text and "| 0 of 150 |" in text
    (line,) = [x for x in text.splitlines() if x.startswith("- imagenet − scratch, gradcam, mass in lesion")]
    assert line.endswith(": better") and "over seeds and slices" in line
