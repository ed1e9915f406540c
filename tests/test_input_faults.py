"""Inputs that would give a wrong result without a word: split lists that leave the dataset, image folders
(links, copies, float images), DICOM series (localizers, missing rescale), intervals from too few units, CAMs
that cannot localise. Each case is a row of docs/reliability.md ("Inputs and options")."""

from __future__ import annotations

import pytest

from covidnet.covid_ct_layout import DatasetError, check_dataset, read_split, split_file


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
