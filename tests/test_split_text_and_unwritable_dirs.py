"""Split files with a byte-order mark or an invisible character in a name, and unwritable run or checkpoint folders:
read right, or refused before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from covidnet.images.covid_ct_layout import COVID, DatasetError, check_dataset, read_split, split_file
from covidnet.core.errors import UserError
from covidnet.core.write_check import check_writable
from covidnet.apps.train import train

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
