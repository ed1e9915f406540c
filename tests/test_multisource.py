"""Several training sources (covidnet/data/multisource.py): patient folds, slice labels, balanced sampling, per-source metrics."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from covidnet.data.datamodule import CovidCTDataModule
from covidnet.data.multisource import SourceItem, patient_folds, sampling_weights, source_items, source_metrics, split_by_patient, training_label
from covidnet.images.sampling import EpochSampler
from covidnet.images.sources.base import Record, SourceError


def rec(patient: str, diagnosis: str, label: int, i: int, slice_label: int | None = None) -> Record:
    return Record(key=f"{patient}/{i}.dcm", path=Path(f"/x/{patient}/{i}.dcm"), label=label, diagnosis=diagnosis,
                  patient=patient, position=i, slice_label=slice_label)


def scans() -> list[Record]:
    out = []
    for patient, diagnosis, label in [("C/p1", "COVID", 1), ("C/p2", "COVID", 1), ("A/c1", "CAP", 0), ("A/c2", "CAP", 0),
                                      ("N/n1", "normal", 0), ("N/n2", "normal", 0)]:
        out += [rec(patient, diagnosis, label, i, slice_label=(i % 2) if label else 0) for i in range(4)]
    return out


def test_folds_split_by_patient_and_test_every_patient_once():
    records = scans()
    tested = []
    for fold in (0, 1):
        parts = split_by_patient(records, fold, 2, "test")
        train_p = {r.patient for r in parts["train"]}
        test_p = {r.patient for r in parts["test"]}
        assert not train_p & test_p  # no patient in two splits
        assert len(parts["train"]) + len(parts["test"]) == len(records)
        # every diagnosis is trained on and tested in every fold
        assert {r.diagnosis for r in parts["train"]} == {r.diagnosis for r in parts["test"]} == {"COVID", "CAP", "normal"}
        tested += sorted(test_p)
    assert sorted(tested) == sorted({r.patient for r in records})  # each patient tested exactly once over the folds
    assert {r.patient for r in split_by_patient(records, 0, 2, "t")["test"]} == {"C/p1", "A/c1", "N/n1"}


def test_folds_refuse_what_cannot_be_split():
    records = scans()
    with pytest.raises(SourceError, match="fewer patients than folds"):
        patient_folds(records, 3, "s")
    with pytest.raises(SourceError, match="data.fold=2"):
        split_by_patient(records, 2, 2, "s")
    with pytest.raises(SourceError, match="no patient"):
        patient_folds([Record("a.png", Path("a.png"), 1, "COVID")], 2, "s")


def test_slice_label_policies():
    infected, clear, normal = rec("C/p1", "COVID", 1, 0, 1), rec("C/p1", "COVID", 1, 1, 0), rec("N/n1", "normal", 0, 0, None)
    assert [training_label(r, "infected_only") for r in (infected, clear, normal)] == [1, None, 0]
    assert [training_label(r, "uninfected_negative") for r in (infected, clear, normal)] == [1, 0, 0]
    assert [training_label(r, "patient") for r in (infected, clear, normal)] == [1, 1, 0]
    with pytest.raises(SourceError, match="slice-level finding"):
        training_label(rec("C/p1", "COVID", 1, 2, None), "infected_only")
    # test images keep their patient's label whatever the training policy
    items = source_items("md", [infected, clear, normal], "test", "infected_only")
    assert [it.label for it, _ in items] == [1, 1, 0]
    items = source_items("md", [infected, clear, normal], "train", "infected_only")
    assert [(it.key, it.label) for it, _ in items] == [(infected.key, 1), (normal.key, 0)]


def test_balanced_sampling_gives_each_source_and_class_the_same_share():
    items = [SourceItem("covid_ct", f"a{i}", 1) for i in range(60)] + [SourceItem("covid_ct", f"b{i}", 0) for i in range(30)]
    items += [SourceItem("md", f"c{i}", 1) for i in range(5)] + [SourceItem("md", f"d{i}", 0) for i in range(5)]
    w = sampling_weights(items, "source_class")
    assert sampling_weights(items, "none") is None
    sampler = EpochSampler(len(items), seed=0, weights=w)
    cells = Counter()
    for epoch in range(40):
        perm, _ = sampler.order(epoch)
        cells.update((items[i].source, items[i].label) for i in perm.tolist())
    shares = np.array(list(cells.values())) / sum(cells.values())
    assert len(cells) == 4 and np.allclose(shares, 0.25, atol=0.02), cells
    # the same (seed, epoch) draws the same indices: a resumed run replays them
    assert torch.equal(sampler.order(3)[0], EpochSampler(len(items), seed=0, weights=w).order(3)[0])
    with pytest.raises(ValueError, match="data.balance"):
        sampling_weights(items, "classes")


def test_source_metrics_per_source_and_per_patient():
    items, records, probs = [], [], []
    rng = np.random.default_rng(0)
    for i in range(20):
        items.append(SourceItem("covid_ct", f"img{i}.png", i % 2))
        records.append(None)
        probs.append(0.8 if i % 2 else 0.2)
    for r in scans():
        items.append(SourceItem("md", r.key, r.label, r.patient, r.diagnosis, r.slice_label))
        records.append(r)
        probs.append(0.9 if r.label else 0.1 + 0.05 * rng.random())
    out = source_metrics(items, records, np.asarray(probs), n_boot=200)
    assert set(out) == {"covid_ct", "md"}
    assert out["covid_ct"]["images"]["all"]["n"] == 20
    assert out["covid_ct"]["images"]["all"]["metrics"]["auroc"]["estimate"] == pytest.approx(1.0)
    md = out["md"]
    assert md["n_images"] == 24 and md["n_patients"] == 6
    assert md["images"]["all"]["resampled"].startswith("patients")
    assert set(md["images"]) == {"all", "COVID vs CAP", "COVID vs normal"}
    assert md["patients"]["mean"]["all"]["n"] == 6


def write_folder_source(root: Path) -> Path:
    """image_folder layout with patient folders: COVID patients' slices carry a bright blob."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for cls, label in (("COVID", 1), ("Normal", 0)):
        for p in ("p1", "p2"):
            for i in range(3):
                img = rng.normal(60, 10, (40, 40))
                if label:
                    img[10:22, 10:22] += 150
                (root / cls / p).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / cls / p / f"{i}.png")
    return root


def test_data_module_adds_a_second_source_by_patient(synthetic_root, tmp_path):
    src = write_folder_source(tmp_path / "second")
    defs = {"second": {"kind": "image_folder", "root": str(src), "read": {"classes": {"COVID": 1, "Normal": 0}, "patient_level": 0}}}
    dm = CovidCTDataModule(root=str(synthetic_root), image_size=32, batch_size=8, sources=["covid_ct", "second"], fold=1,
                           slice_labels="patient", balance="source_class", source_defs=defs)
    dm.setup()
    base = CovidCTDataModule(root=str(synthetic_root), image_size=32, batch_size=8)
    base.setup()
    for split in ("train", "test"):
        extra = [it for it in dm.items[split] if it.source == "second"]
        assert len(extra) == 6  # 2 classes x 1 patient x 3 slices in each split
        assert len(dm.datasets[split]) == len(base.datasets[split]) + 6
        assert dm.split_names(split)[-1].startswith("second/")
    train_p = {it.patient for it in dm.items["train"] if it.patient}
    test_p = {it.patient for it in dm.items["test"] if it.patient}
    assert train_p == {"COVID/p1", "Normal/p1"} and test_p == {"COVID/p2", "Normal/p2"}  # the i-th patient of each diagnosis is in fold i: fold 1 tests the second ones
    assert len(dm.datasets["val"]) == len(base.datasets["val"])  # model selection stays on COVID-CT's validation split
    assert dm.test_source_names() == ["covid_ct", "second"]
    # the second source's images went through the same cache path (uint8, image_size)
    assert dm.datasets["test"].images.dtype == torch.uint8 and dm.datasets["test"].images.shape[-1] == 32


def test_data_module_refuses_sources_without_covid_ct(synthetic_root):
    with pytest.raises(ValueError, match="always trained on"):
        CovidCTDataModule(root=str(synthetic_root), sources=["covid_ct_md"])
    with pytest.raises(ValueError, match="data.slice_labels"):
        CovidCTDataModule(root=str(synthetic_root), slice_labels="all")


def test_train_reports_each_source_and_writes_its_rows(synthetic_root, tmp_path):
    import csv
    import json

    from hydra import compose, initialize_config_dir

    from covidnet.apps.train import train

    src = write_folder_source(tmp_path / "second")
    conf = Path(__file__).resolve().parents[1] / "conf"
    overrides = [
        f"data.root={synthetic_root}", f"paths.output_dir={tmp_path / 'run'}", "data.image_size=32", "data.batch_size=8",
        "trainer.max_epochs=1", "trainer.accelerator=cpu", "+trainer.enable_progress_bar=false", "++callbacks.cam=null",
        "data.sources=[covid_ct,second]", "data.slice_labels=patient", "data.balance=source_class",
        f"data.source_defs={{second: {{kind: image_folder, root: '{src}', read: {{classes: {{COVID: 1, Normal: 0}}, patient_level: 0}}}}}}",
    ]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    metrics = train(cfg)
    by_source = metrics["test_by_source"]
    assert set(by_source) == {"covid_ct", "second"}
    assert by_source["second"]["n_patients"] == 2 and by_source["second"]["n_images"] == 6
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test_by_source"]["second"]["images"]["all"]["n"] == 6
    with open(tmp_path / "run" / "predictions_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert Counter(r["source"] for r in rows) == Counter({"covid_ct": 16, "second": 6})
    assert {r["patient"] for r in rows if r["source"] == "second"} == {"COVID/p1", "Normal/p1"}  # fold 0 tests the first patients
