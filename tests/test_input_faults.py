"""Inputs that would give a wrong result without a word: split lists that leave the dataset, image folders
(links, copies, float images), DICOM series (localizers, missing rescale), intervals from too few units, CAMs
that cannot localise. Each case is a row of docs/reliability.md ("Inputs and options")."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from covidnet.images.covid_ct_layout import DatasetError, check_dataset, load_grey, read_split, split_file
from covidnet.images.sources import read_source
from covidnet.images.sources.base import SourceError


# --- split lists ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["/etc/hostname", "../CT_NonCOVID/x.png", "..\\..\\secret.png", "sub/../../x.png"])
def test_a_split_list_naming_a_file_outside_the_image_folders_is_refused_with_file_and_line(fresh_synthetic, bad):
    listing = split_file(fresh_synthetic, 1, "test")
    names = listing.read_text().splitlines()
    listing.write_text("\n".join([names[0], "", bad, *names[1:]]) + "\n")
    for read in (lambda: read_split(fresh_synthetic, "test"), lambda: check_dataset(fresh_synthetic)):
        with pytest.raises(DatasetError) as err:
            read()
        assert f"{listing}, line 3:" in str(err.value) and "lead outside the image folders" in str(err.value)
    assert len(read_split(fresh_synthetic, "val")) == 6  # the other splits' lists are unaffected


# --- image folders ----------------------------------------------------------------------------------------
def _png(path, value: int, size: int = 32):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def test_a_linked_subfolder_is_followed_and_named_and_a_loop_is_not_read_twice(tmp_path):
    _png(tmp_path / "set" / "covid" / "a.png", 10)
    _png(tmp_path / "elsewhere" / "b.png", 20)
    _png(tmp_path / "set" / "normal" / "c.png", 30)
    (tmp_path / "set" / "covid" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere" / "loop").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    records, notes = read_source("image_folder", tmp_path / "set", classes={"covid": 1, "normal": 0})
    assert sorted(r.key for r in records) == ["covid/a.png", "covid/linked/b.png", "normal/c.png"]
    assert any("linked: a symbolic link to the folder" in n and n.endswith("followed") for n in notes)
    assert any("not read twice" in n for n in notes)


def test_the_same_image_under_two_names_is_counted_once_and_named(tmp_path):
    _png(tmp_path / "covid" / "a.png", 10)
    (tmp_path / "covid" / "copy of a.png").write_bytes((tmp_path / "covid" / "a.png").read_bytes())
    _png(tmp_path / "normal" / "c.png", 30)
    (tmp_path / "normal" / ".DS_Store").write_bytes(b"\0")
    records, notes = read_source("image_folder", tmp_path, classes={"covid": 1, "normal": 0})
    assert sorted(r.key for r in records) == ["covid/a.png", "normal/c.png"]
    assert any("copy of a.png: the same image (same bytes) as" in n and "counted once" in n for n in notes)
    assert any("1 hidden file(s) not read (e.g. .DS_Store)" in n for n in notes)
    (tmp_path / "normal" / "a again.png").write_bytes((tmp_path / "covid" / "a.png").read_bytes())
    with pytest.raises(SourceError, match="a again.png: the same image .* in class folder covid; remove one"):
        read_source("image_folder", tmp_path, classes={"covid": 1, "normal": 0})


def test_a_float_tiff_of_hounsfield_units_is_windowed_and_said_not_stretched(tmp_path):
    hu = np.full((32, 32), -1000.0, np.float32)
    hu[8:24, 8:24] = 40.0  # soft tissue in air
    (tmp_path / "covid").mkdir()
    Image.fromarray(hu, "F").save(tmp_path / "covid" / "hu.tif")
    Image.fromarray(np.full((32, 32), 0.25, np.float32), "F").save(tmp_path / "covid" / "grey.tif")
    _png(tmp_path / "normal" / "c.png", 30)
    records, notes = read_source("image_folder", tmp_path, classes={"covid": 1, "normal": 0})
    got = {r.key: r.load() for r in records}
    # through the lung window -1350..150 HU (a min-max stretch would give 0 and 1)
    np.testing.assert_allclose([got["covid/hu.tif"][0, 0], got["covid/hu.tif"][16, 16]], [350 / 1500, 1390 / 1500], rtol=1e-5)
    assert any("1 floating-point image(s) (e.g. hu.tif)" in n and "-1350 to 150 HU" in n for n in notes)
    np.testing.assert_allclose(got["covid/grey.tif"], 0.25)  # grey levels already: as they are
    with pytest.raises(DatasetError, match="floating-point pixel values from -1000 to 40"):
        load_grey(tmp_path / "covid" / "hu.tif")


# --- DICOM series -----------------------------------------------------------------------------------------
DICOM_CLASSES = {"COVID": 1, "Normal": 0}


def _scans(root):
    pytest.importorskip("pydicom")
    from synthetic_dicom import write_scans

    return write_scans(root, {"COVID": ["p1"], "Normal": ["n1"]})


def test_a_localizer_in_the_series_is_left_out_and_named(tmp_path):
    from pydicom.uid import generate_uid
    from synthetic_dicom import ct_slice, write_slice

    scans = _scans(tmp_path)
    series = str(__import__("pydicom").dcmread(scans / "COVID" / "p1" / "000.dcm").SeriesInstanceUID)
    p1 = scans / "COVID" / "p1"
    write_slice(p1 / "scout.dcm", ct_slice(), 1.5, 90, series, image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    write_slice(p1 / "side.dcm", ct_slice(), 2.5, 91, series, orientation=[0, 1, 0, 0, 0, -1])  # sagittal
    write_slice(scans / "Normal" / "n1" / "scout2.dcm", ct_slice(), 9.0, 92, generate_uid(), image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    records, notes = read_source("dicom", scans, classes=DICOM_CLASSES)
    keys = [r.key for r in records]
    assert len(keys) == 8 and not any(k.endswith(("scout.dcm", "side.dcm", "scout2.dcm")) for k in keys)
    note = next(n for n in notes if n.startswith("COVID/p1: 2 file(s) left out"))
    assert "scout.dcm (ImageType LOCALIZER" in note and "side.dcm (sagittal, while 4 slices of the series are axial)" in note
    # a localizer of its own series no longer reads as "2 series mixed in one patient folder"
    assert any(n.startswith("Normal/n1: 1 file(s) left out") for n in notes)


def test_a_series_without_rescale_says_what_was_assumed_and_uses_pydicoms_modality_lut(tmp_path):
    from synthetic_dicom import ct_slice, write_series

    hu = ct_slice()
    write_series(tmp_path / "COVID" / "p1", [0.0, 1.0], rescale=())
    write_series(tmp_path / "Normal" / "n1", [0.0, 1.0], rescale=("RescaleIntercept",), slope=1.0)
    write_series(tmp_path / "Normal" / "n2", [0.0, 1.0])
    records, notes = read_source("dicom", tmp_path, classes=DICOM_CLASSES)
    stored = next(n for n in notes if "no RescaleSlope/RescaleIntercept: values taken as stored" in n)
    assert stored.startswith(f"dicom set at {tmp_path}: 2 of 6 slices (e.g. COVID/p1/") and "HU would be off by 1024" in stored
    assert "unsigned values" in stored
    assert any("2 of 6 slices" in n and "no RescaleSlope: taken as 1" in n for n in notes)
    from covidnet.images.sources.dicom_files import read_hu

    by_key = {r.key: r for r in records}
    body = hu[24, 24]  # 40 HU of soft tissue, stored as 40 + 1024
    assert read_hu(by_key["Normal/n2/000.dcm"].path)[24, 24] == pytest.approx(body)
    assert read_hu(by_key["Normal/n1/000.dcm"].path)[24, 24] == pytest.approx(body)  # the intercept kept, slope taken as 1
    assert read_hu(by_key["COVID/p1/000.dcm"].path)[24, 24] == pytest.approx(body + 1024)  # as stored, and said so


def test_the_extension_hint_is_a_setting_hydra_takes(tmp_path):
    from hydra import compose, initialize_config_dir

    from covidnet.core.configs import config_dir
    from covidnet.data.sets import load_set

    scans = _scans(tmp_path)
    (scans / "COVID" / "p1" / "IM0001").write_bytes((scans / "COVID" / "p1" / "000.dcm").read_bytes())
    loaded = load_set("covid_ct_md", {"kind": "dicom", "root": str(scans), "read": {"classes": DICOM_CLASSES}})
    note = next(n for n in loaded.notes if "without an extension" in n)
    override = note.split('read with "')[1].split('"')[0]
    assert override == "++eval.covid_ct_md.read.extensions=['.dcm','']"
    with initialize_config_dir(str(config_dir()), version_base=None):
        cfg = compose("evaluate", overrides=["eval=covid_ct_md", "ckpt=x", override])
    assert list(cfg.eval.covid_ct_md.read.extensions) == [".dcm", ""]


# --- intervals from too few units -------------------------------------------------------------------------
def test_one_patient_per_class_gives_no_interval_instead_of_a_zero_width_one():
    from covidnet.metrics import arm_stats, stats
    from covidnet.metrics.set_metrics import block

    labels = np.array([1] * 6 + [0] * 6)
    probs = np.linspace(0.2, 0.9, 12)
    groups = ["a"] * 6 + ["b"] * 6  # one patient per class: every patient resample is the set itself
    ivs = stats.bootstrap_metrics(labels, probs, n_boot=200, groups=groups)
    assert all(np.isnan(iv.low) and iv.n_boot == 0 for iv in ivs.values())
    assert ivs["acc"].note == "n/a: too few patients per class (1 COVID, 1 non-COVID; an interval needs at least 5 of each)"
    assert stats.signed(ivs["acc"]).endswith("(n/a: too few patients per class (1 COVID, 1 non-COVID; an interval needs at least 5 of each))")
    b = block(labels, probs, groups, 200, 0)
    assert b["metrics"]["auroc"]["low"] is None and b["metrics"]["auroc"]["note"].startswith("n/a: too few patients")
    assert b["intervals"].startswith("n/a: too few patients") and b["mean_prob_covid"]["note"].startswith("n/a: too few patients (2;")
    # images: 4 COVID images are too few, 5 of each are enough
    assert stats.bootstrap_metrics(labels[2:], probs[2:], n_boot=200)["acc"].note.startswith("n/a: too few images per class (4 COVID")
    assert np.isfinite(stats.bootstrap_metrics(labels[1:11], probs[1:11], n_boot=200)["acc"].low)
    runs = np.tile(probs, (3, 1))
    fixed, seeded = arm_stats.arm_differences(labels, runs, runs + 0.01, n_boot=100, groups=groups)
    assert fixed["auroc"].note and seeded["auroc"].low is None and "too few patients" in seeded["auroc"].text
    assert arm_stats.verdict(seeded["auroc"]) == "not resolved"
    assert arm_stats.paired_difference(labels, runs, runs, groups=groups, n_boot=50)["acc"].note


# --- CAMs that cannot localise ----------------------------------------------------------------------------
def _tiny_checkpoint(root, path):
    """resnet18 trained one step at 32 px: its layer4 map is 1 x 1 (output stride 32)."""
    import functools

    import lightning as L
    import torch

    from covidnet.data.datamodule import CovidCTDataModule
    from covidnet.models.model import CovidClassifier

    L.seed_everything(0)
    dm = CovidCTDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0)
    model = CovidClassifier(arch="resnet18", init="scratch", optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(path)
    return model, dm


def test_a_one_by_one_cam_map_gives_no_cam_numbers_and_says_so(fresh_synthetic, tmp_path, capsys):
    import json

    import torch
    from hydra import compose, initialize_config_dir

    from covidnet.callbacks import CamLogger
    from covidnet.explain.cam import cam_grid, grid_problem
    from covidnet.core.configs import config_dir
    from covidnet.trained.visualization import visualize

    model, dm = _tiny_checkpoint(fresh_synthetic, tmp_path / "tiny.ckpt")
    x = torch.zeros(2, 3, 32, 32)
    assert cam_grid(model, x, "layer4") == (1, 1) and cam_grid(model, x, "layer3") == (2, 2)
    assert "gives a 1x1 map" in grid_problem((1, 1), "layer4") and grid_problem((2, 2), "layer3") is None
    with pytest.warns(UserWarning, match="CamLogger: the CAM layer layer4 gives a 1x1 map"):
        assert CamLogger(k=1, layer="layer4").coarse_maps(model, x)
    with initialize_config_dir(str(config_dir()), version_base=None):
        cfg = compose("visualize", overrides=[f"ckpt={tmp_path / 'tiny.ckpt'}", f"data.root={fresh_synthetic}", "n_per_class=2",
                                              "score_images=figure", f"out_dir={tmp_path / 'out'}", "methods=[gradcam]",
                                              "layer=layer4"])  # stride 32 at 32 px: one cell
    with pytest.warns(UserWarning, match="cannot localise, so no CAM numbers are computed"):
        visualize(cfg)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (name,) = results["models"]
    assert results["cam_grid"][name] == [1, 1] and "1x1 map" in results["not_computed"][name]
    assert list(results["faithfulness"][name]) == ["not_computed"] and list(results["shortcut"][name]) == ["not_computed"]
    assert "CAM numbers not computed: the CAM layer layer4 gives a 1x1 map" in capsys.readouterr().out
    rows = (tmp_path / "out" / "images.csv").read_text().splitlines()
    assert rows[1].endswith("n/a,n/a,n/a,n/a")  # lung area, then drop P, drop logit, mass in lungs: not computed
    with pytest.raises(ValueError, match="callbacks.cam.layer='layer9'; choose one of layer1"):
        CamLogger(layer="layer9")


# --- options refused before training ----------------------------------------------------------------------
def _train_problems(*overrides: str) -> list[str]:
    from hydra import compose, initialize_config_dir

    from covidnet.core.configs import config_dir
    from covidnet.core.options import problems
    from covidnet.apps.train import TRAIN

    with initialize_config_dir(str(config_dir()), version_base=None):
        return problems(compose("train", overrides=list(overrides)), TRAIN)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["callbacks.cam.layer=layer9"], "callbacks.cam.layer=layer9: must be one of layer1, layer2, layer3, layer4"),
    (["callbacks.cam.methods=[gradcam,bogus]"], "callbacks.cam.methods=['gradcam', 'bogus']: must be a non-empty list of gradcam, eigencam"),
    (["callbacks.cam.target=truth"], "callbacks.cam.target=truth: must be one of label, prediction"),
    (["callbacks.cam.k=0"], "callbacks.cam.k=0: must be an integer >= 1"),
    (["callbacks.cam.every_n_epochs=0"], "callbacks.cam.every_n_epochs=0: must be an integer >= 1"),
    (["trainer.devices=0"], "trainer.devices=0: must be a count >= 1, -1 (all), auto, or a list of device indices (0 devices"),
    (["trainer.check_val_every_n_epoch=5", "trainer.max_epochs=3"],
     "trainer.check_val_every_n_epoch=5 with trainer.max_epochs=3: validation would never run"),
])
def test_late_options_are_refused_before_training(overrides, expected):
    found = _train_problems(*overrides)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_gpu_without_a_gpu_is_refused_before_training():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    (found,) = _train_problems("trainer.accelerator=gpu")
    assert found.startswith("trainer.accelerator=gpu: must be one of auto, cpu") and "CUDA GPU" in found
    assert _train_problems("trainer.accelerator=cpu", "trainer.devices=2", "callbacks.cam=null") == []


def test_a_single_source_name_is_a_list_of_one_and_a_bad_test_source_is_named(fresh_synthetic):
    from covidnet.data.datamodule import CovidCTDataModule

    assert _train_problems("data.sources=covid_ct") == []
    assert CovidCTDataModule(root=str(fresh_synthetic), sources="covid_ct").hparams.sources == ["covid_ct"]
    with pytest.raises(SourceError, match=r"^data.test_sources: Unknown eval set 'bogus'"):
        CovidCTDataModule(root=str(fresh_synthetic), test_sources=["bogus"])


@pytest.mark.slow
def test_train_py_gives_one_message_and_exit_2_for_the_late_options(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from covidnet.apps.cli import EXIT_USER_ERROR

    root = Path(__file__).resolve().parents[1]
    args = ["trainer.devices=0", "callbacks.cam.layer=layer9", "callbacks.cam.k=0", "trainer.check_val_every_n_epoch=5",
            "trainer.max_epochs=2", f"data.root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run([sys.executable, "train.py", *args], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_USER_ERROR and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "4 invalid options (nothing was started)" in done.stderr and "callbacks.cam.layer=layer9" in done.stderr
