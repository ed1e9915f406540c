"""Smaller faults: split files with a byte-order mark, invisible characters, unwritable folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from covidnet.covid_ct_layout import COVID, DatasetError, check_dataset, read_split, split_file
from covidnet.errors import UserError
from covidnet.atomic import check_writable
from covidnet.train import train

ROOT = Path(__file__).resolve().parents[1]


def test_split_file_with_a_byte_order_mark_reads_its_first_name(fresh_synthetic):
    path = split_file(fresh_synthetic, COVID, "train")
    names = path.read_text().splitlines()
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # what Notepad's "UTF-8 with BOM" writes
    samples = read_split(fresh_synthetic, "train")
    assert samples[0].path.name == names[0] and samples[0].path.is_file()
    check_dataset(fresh_synthetic)  # no "missing image"


def test_a_name_with_an_invisible_character_is_shown_escaped(fresh_synthetic):
    path = split_file(fresh_synthetic, COVID, "train")
    names = path.read_text().splitlines()
    path.write_text("\n".join([names[0].replace(".", "\u200b.", 1), *names[1:]]) + "\n")
    with pytest.raises(DatasetError, match=r"missing image: '.*\\u200b\..*'") as err:
        check_dataset(fresh_synthetic)
    assert "\u200b" not in str(err.value)


def test_unwritable_folders_are_refused_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=r"The run directory .*a-file/run cannot be written: .*a-file is a file"):
        check_writable(blocker / "run", "run directory")
    check_writable(tmp_path / "new" / "run", "run directory")  # control: a creatable folder passes
    assert not (tmp_path / "new").exists()  # and checking creates nothing


def test_unwritable_checkpoint_dir_is_found_before_training(fresh_synthetic, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    overrides = ["experiment=smoke", "data.image_size=32", "data.batch_size=4", "callbacks.cam=null", f"data.root={fresh_synthetic}",
                 f"paths.output_dir={tmp_path / 'out'}", f"callbacks.model_checkpoint.dirpath={blocker / 'checkpoints'}",
                 "+callbacks.rec._target_=fault_helpers.RecordBatches", f"+callbacks.rec.path={tmp_path / 'batches.jsonl'}"]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with pytest.raises(UserError, match=r"The checkpoint directory .*a-file/checkpoints cannot be written"):
        train(cfg)
    assert not (tmp_path / "batches.jsonl").exists()  # not a single step trained


def test_figure_columns_are_labelled_by_what_distinguishes_the_models():
    from covidnet.cam_figure import column_labels

    names = ["data.image_size=64,init=imagenet,trainer.max_epochs=1", "data.image_size=64,init=scratch,trainer.max_epochs=1"]
    assert column_labels(names) == ["init=imagenet", "init=scratch"]
    two = column_labels(["data.fraction=0.25,init=scratch,model.freeze=up_to_layer4,seed=0", "data.fraction=0.5,init=ct,model.freeze=up_to_layer4,seed=0"])
    assert two == ["data.fraction=0.25\ninit=scratch", "data.fraction=0.5\ninit=ct"]  # wrapped to the column
    long = column_labels(["model.weights_path_like_option=" + "x" * 40 + ",init=a", "init=b"])
    assert all(len(line) <= 24 for label in long for line in label.split("\n"))
    assert column_labels(["init=scratch"]) == ["init=scratch"]  # one model: its whole name
    assert column_labels(["scratch-resnet18", "ct-resnet152"]) == ["scratch-resnet18", "ct-resnet152"]


def test_train_downloads_by_default_but_only_into_a_missing_or_empty_root(tmp_path, monkeypatch):
    """The README's main command fetches the data on a fresh machine; a folder holding anything is never written to."""
    import covidnet.datamodule as data

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"data.root={tmp_path / 'covid-ct'}"])
    assert cfg.data.download is True
    calls = []
    monkeypatch.setattr(data, "download_covid_ct", lambda root: calls.append(Path(root)))
    dm = data.CovidCTDataModule(root=str(tmp_path / "covid-ct"), download=True)
    dm.prepare_data()  # missing: fetched
    (tmp_path / "empty").mkdir()
    data.CovidCTDataModule(root=str(tmp_path / "empty"), download=True).prepare_data()  # empty: fetched
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    used = data.CovidCTDataModule(root=str(tmp_path / "used"), download=True)
    used.prepare_data()  # holds something: not touched, setup lists what is missing
    assert calls == [(tmp_path / "covid-ct").resolve(), (tmp_path / "empty").resolve()]
    with pytest.raises(DatasetError, match=r"COVID-CT data not found at .*used"):
        used.setup()
