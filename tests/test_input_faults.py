"""Inputs that would give a wrong result without a word: split lists that leave the dataset, image folders
(links, copies, float images), DICOM series (localizers, missing rescale), intervals from too few units, CAMs
that cannot localise. Each case is a row of docs/reliability.md ("Inputs and options")."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from covidnet.covid_ct_layout import DatasetError, check_dataset, load_grey, read_split, split_file
from covidnet.sources import read_source
from covidnet.sources.base import SourceError


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
