"""A metric registered in covidnet.metrics.metric_registry alone reaches the statistics, training's logging and every report table.

The dummy metric (Matthews correlation, logged with torchmetrics' BinaryMatthewsCorrCoef) is registered for one test
only and removed after it; no other file names it.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from test_report import fake_job
from torch.utils.data import DataLoader, TensorDataset

from covidnet.metrics import arm_stats, metric_registry, stats
from covidnet.models.model import CovidClassifier, binary_metrics
from covidnet.report import main
from covidnet.metrics.set_metrics import set_metrics, summary_rows
from covidnet.images.sources.base import Record

KEY = "mcc"


def mcc(labels, probs, threshold):
    tp, tn, fp, fn = (np.asarray(c, float) for c in metric_registry.confusion(labels, probs, threshold))
    return metric_registry.ratio(tp * tn - fp * fn, np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))


DUMMY = metric_registry.Metric(KEY, mcc, header="MCC", words="Matthews correlation", logged_as="BinaryMatthewsCorrCoef")


@pytest.fixture
def dummy():
    assert KEY not in metric_registry.keys()
    with metric_registry.registered(DUMMY) as metric:
        yield metric
    assert KEY not in metric_registry.keys()  # gone again: no other test sees it


def section(text: str, title: str) -> str:
    return text.split(f"## {title}")[1].split("\n## ")[0]


def header_of(table_text: str) -> list[str]:
    first = next(line for line in table_text.splitlines() if line.startswith("|"))
    return [c.strip() for c in first.strip("|").split("|")]


def scan(n: int = 12) -> list[Record]:
    """An external set: 4 patients of 3 slices, two COVID."""
    return [Record(key=f"s{i}.dcm", path=Path(f"s{i}.dcm"), label=int(i < n // 2), diagnosis="COVID" if i < n // 2 else "normal",
                   patient=f"p{i // 3}") for i in range(n)]


def sweep_with_every_table(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """init=scratch,ct x 2 seeds: test predictions, per-source test metrics and an external set ``md`` per job, the
    metrics.json files written by the code that writes them in training and evaluate.py (so with the dummy)."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 40)
    records = scan()
    ext_labels = np.asarray([r.label for r in records])
    jobs = {}
    for init, skill in (("scratch", 0.2), ("ct", 0.6)):
        for seed in (0, 1):
            probs = np.round(np.clip(skill * labels + (1 - skill) * rng.random(40), 0, 1), 4)
            ext = np.round(np.clip(skill * ext_labels + (1 - skill) * rng.random(12), 0, 1), 4)
            md = set_metrics(records, ext, 50, 0, name="md", kind="dicom", root="md")
            by_source = {"covid_ct": {"images": {"all": md["images"]["all"]}}, "md": md}
            job = root / f"init={init},seed={seed}"
            fake_job(job, [f"init={init}", f"seed={seed}"], labels, probs, {"init": init, "seed": seed, "test_by_source": by_source})
            (job / "eval" / "md").mkdir(parents=True)
            (job / "eval" / "md" / "metrics.json").write_text(json.dumps(md))
            with open(job / "eval" / "md" / "predictions.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["path", "patient", "label", "prob_covid"])
                w.writerows((r.key, r.patient, r.label, f"{q:.4f}") for r, q in zip(records, ext))
            jobs[job.name] = (labels, probs)
    return jobs


def test_a_registered_metric_reaches_the_statistics_and_every_table(dummy, tmp_path):
    jobs = sweep_with_every_table(tmp_path)
    seen: set[str] = set()  # the registry's set-level tables this test saw the dummy in

    # statistics: point values and intervals
    labels, probs = next(iter(jobs.values()))
    ivs = stats.bootstrap_metrics(labels, probs, 50, 0)
    assert list(ivs)[-1] == KEY and ivs[KEY].estimate == pytest.approx(np.corrcoef(labels, probs > 0.5)[0, 1])

    # a scored set: metrics.json and evaluate.py's summary.csv rows
    md = json.loads((tmp_path / "init=ct,seed=0" / "eval" / "md" / "metrics.json").read_text())
    assert KEY in md["images"]["all"]["metrics"] and KEY in md["patients"]["mean"]["all"]["metrics"]
    row = summary_rows("model", md)[0]
    assert list(row)[list(row).index("f1_high") + 1: list(row).index("mean_prob_covid")] == [KEY, f"{KEY}_low", f"{KEY}_high"]
    seen.add("sets")

    assert main([str(tmp_path), "--n-boot", "50"]) == 0
    text = (tmp_path / "report.md").read_text()
    # the sweep's summary and runs tables, and their csv files: after the built-in metrics
    summary = header_of(section(text, "Summary: mean ± std over seeds"))
    assert summary[summary.index("precision") + 1] == "MCC"
    runs = header_of(section(text, "Runs, with 95% bootstrap intervals"))
    assert runs[runs.index("precision") + 1] == "MCC"
    with open(tmp_path / "runs.csv", newline="") as f:
        for r in csv.DictReader(f):
            assert float(r[KEY]) == pytest.approx(float(mcc(*jobs[r["job"]], 0.5)), abs=1e-6)
    with open(tmp_path / "summary.csv", newline="") as f:
        assert f"{KEY}_mean" in next(csv.DictReader(f))
    assert KEY in json.loads((tmp_path / "report.json").read_text())["summary"][0]
    # the paired comparison: its columns, verdict and sentence
    comparison = section(text, "Paired differences on the same test images")
    assert "Δ Matthews correlation [95% CI over seeds and images]" in header_of(comparison)
    assert "- Matthews correlation: ct minus scratch" in comparison
    seen.add("comparison")
    # each test source on its own
    sources = header_of(section(text, "Each test source on its own"))
    assert sources[sources.index("runs") + 1:] == ["AUROC", "sensitivity", "specificity", "MCC", "infected-slice AUROC", "patient AUROC (mean P)"]
    seen.add("sources")
    # the external set: its table and the paired differences below it
    external = section(text, "External sets: the best checkpoints on other CT data")
    assert header_of(external)[2:] == ["slice auroc", "slice acc", "slice sensitivity", "slice specificity", f"slice {KEY}",
                                       "slice mean_prob_covid", "patient auroc"]
    assert f"  - Δ {KEY} " in external
    seen |= {"external", "external_differences"}
    # seed ensembles
    ensemble = section(text, "Seed ensembles: each row's runs as one model")
    assert header_of(ensemble)[-1] == KEY and f", {KEY} " in ensemble
    seen.add("ensemble")

    assert seen == set(metric_registry.TABLES)  # a new table in the registry needs its check here


def test_training_logs_a_registered_metric_beside_the_built_in_ones(dummy):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, 32, 32, generator=g), (torch.arange(24) % 2).float()
    loader = DataLoader(TensorDataset(x, y), batch_size=6, shuffle=False)
    torch.manual_seed(0)
    model = CovidClassifier(optimizer=functools.partial(torch.optim.SGD, lr=0.0))
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    logged = trainer.callback_metrics
    assert {f"{stage}/{m}" for stage in ("train", "val") for m in metric_registry.keys()} <= set(logged)
    assert {"val/select", "val/auroc", "val/loss"} <= set(logged)  # the selection is untouched
    model.eval()
    with torch.no_grad():
        probs = torch.sigmoid(torch.cat([model.logits(b) for b, _ in loader])).numpy()
    assert 0 < (probs > 0.5).sum() < len(probs)  # both calls made: the value below is no 0/0
    assert logged[f"val/{KEY}"].item() == pytest.approx(float(mcc(y.numpy(), probs, 0.5)), abs=1e-5)
    tested = trainer.test(model, loader, verbose=False)[0]
    assert tested[f"test/{KEY}"] == pytest.approx(float(mcc(y.numpy(), probs, 0.5)), abs=1e-5)


def test_what_a_registration_must_get_right():
    with pytest.raises(ValueError, match="registered already"):
        metric_registry.register(metric_registry.Metric("auroc", mcc, "x", "x"))
    with pytest.raises(ValueError, match="unknown tables"):
        metric_registry.register(metric_registry.Metric("other", mcc, "x", "x", tables=frozenset({"summry"})))
    with pytest.raises(ValueError, match="Python identifier"):
        metric_registry.register(metric_registry.Metric("a b", mcc, "x", "x"))
    with metric_registry.registered(metric_registry.Metric("typo", mcc, "x", "x", logged_as="BinaryMCC")):
        with pytest.raises(ValueError, match="logged_as='BinaryMCC' is no torchmetrics.classification class"):
            binary_metrics("val/")
    assert metric_registry.keys() == ("acc", "auroc", "f1", "sensitivity", "specificity", "precision")


def test_a_lower_is_better_metric_turns_the_verdict_round():
    up = arm_stats.SeedInterval(0.1, 0.05, 0.15, 100, 0, 3, 3, True, True, "brier")
    assert arm_stats.verdict(up) == "better"  # unknown to the registry: higher is better, as for every built-in metric
    brier = metric_registry.Metric("brier", lambda y, p, t: ((np.asarray(p) - np.asarray(y)) ** 2).mean(-1), "Brier", "Brier score",
                                   higher_is_better=False, needs_threshold=False)
    with metric_registry.registered(brier):
        assert arm_stats.verdict(up) == "worse"
        assert stats.bootstrap_metrics([0, 1, 1, 0], [0.0, 1.0, 1.0, 0.0], 10)["brier"].estimate == 0.0
