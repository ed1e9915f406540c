"""covidnet.images.sources: DICOM series (order, windowing, compression, selection, labels), image folders, bad input."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_dicom import ct_slice, write_scans, write_series, write_slice

from covidnet.images.sources import read_source
from covidnet.images.sources.base import SourceError
from covidnet.images.sources.dicom import window_to_unit

pydicom = pytest.importorskip("pydicom")
CLASSES = {"COVID": {"label": 1, "diagnosis": "COVID-19"}, "CAP": {"label": 0, "diagnosis": "CAP"}, "Normal": {"label": 0, "diagnosis": "normal"}}
MD_SAMPLE = Path(os.environ.get("COVIDNET_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "covid-ct")).parent / "covid-ct-md-sample"


def marker_hu(record) -> float:
    """The marker HU written into the slice (10 * z), read back through the lung window."""
    grey = record.load()[:4, :4].mean()
    return float(grey * 1500 - 1350)


def test_dicom_records_are_ordered_by_slice_location_not_file_name(tmp_path):
    write_scans(tmp_path)
    records, notes = read_source("dicom", tmp_path, classes=CLASSES)
    assert notes == []
    assert len(records) == 5 * 4
    by_patient: dict[str, list] = {}
    for r in records:
        by_patient.setdefault(r.patient, []).append(r)
    assert set(by_patient) == {"COVID/p1", "COVID/p2", "CAP/c1", "Normal/n1", "Normal/n2"}
    for recs in by_patient.values():
        assert [r.position for r in recs] == [0, 1, 2, 3]
        # the marker HU is 10 * SliceLocation: ascending order, whatever the file names say
        assert [round(marker_hu(r)) for r in recs] == [0, 10, 20, 30]
        assert [r.key for r in recs] != sorted(r.key for r in recs)
    assert {r.label for r in by_patient["COVID/p1"]} == {1}
    assert {(r.label, r.diagnosis) for r in by_patient["CAP/c1"]} == {(0, "CAP")}
    assert {(r.label, r.diagnosis) for r in by_patient["Normal/n2"]} == {(0, "normal")}


def test_missing_slice_location_falls_back_to_position_then_instance_number_and_says_so(tmp_path):
    write_series(tmp_path / "COVID" / "p1", [2.0, 0.0, 3.0, 1.0], slice_location=False)
    records, notes = read_source("dicom", tmp_path, classes={"COVID": 1})
    assert [round(marker_hu(r)) for r in records] == [0, 10, 20, 30]
    assert len(notes) == 1 and "lack SliceLocation" in notes[0] and "ImagePositionPatient" in notes[0] and "COVID/p1" in notes[0]

    other = tmp_path / "other"
    write_series(other / "COVID" / "p1", [2.0, 0.0, 3.0, 1.0], slice_location=False, position=False)
    records, notes = read_source("dicom", other, classes={"COVID": 1})
    # InstanceNumber is len - file index: file 3 first
    assert [r.key.split("/")[-1] for r in records] == ["003.dcm", "002.dcm", "001.dcm", "000.dcm"]
    assert "InstanceNumber" in notes[0]


def test_hounsfield_units_from_rescale_and_the_lung_window(tmp_path):
    hu = ct_slice(lungs=True, marker_hu=-600.0)
    write_slice(tmp_path / "COVID" / "p1" / "a.dcm", hu, 0.0, 1, "1.2.3", slope=2.0, intercept=-2048.0)
    (record,), _ = read_source("dicom", tmp_path, classes={"COVID": 1})
    grey = record.load()
    assert grey.dtype == np.float32 and grey.shape == hu.shape
    np.testing.assert_allclose(grey, np.clip((hu + 1350) / 1500, 0, 1), atol=1e-6)
    assert grey[0, 0] == pytest.approx(0.5)  # the window level maps to the middle grey
    assert grey[24, 24] == pytest.approx(1.0 if hu[24, 24] > 150 else (hu[24, 24] + 1350) / 1500)
    # a configured window: bone window W 2000 / L 300 maps -700 HU to 0
    (record,), _ = read_source("dicom", tmp_path, classes={"COVID": 1}, window={"width": 2000, "level": 300})
    np.testing.assert_allclose(record.load(), window_to_unit(hu, 2000, 300), atol=1e-6)
    assert window_to_unit(np.array([-700.0, 300.0, 1300.0]), 2000, 300).tolist() == [0.0, 0.5, 1.0]


def test_compressed_series_decodes_to_the_same_image(tmp_path):
    from pydicom.pixels import get_encoder
    from pydicom.uid import RLELossless

    if not get_encoder(RLELossless).is_available:
        pytest.skip("no RLE encoder")
    write_series(tmp_path / "plain" / "COVID" / "p1", [1.0, 0.0])
    write_series(tmp_path / "rle" / "COVID" / "p1", [1.0, 0.0], syntax=RLELossless)
    f = next((tmp_path / "rle").rglob("*.dcm"))
    assert pydicom.dcmread(f).file_meta.TransferSyntaxUID == RLELossless
    plain, _ = read_source("dicom", tmp_path / "plain", classes={"COVID": 1})
    rle, _ = read_source("dicom", tmp_path / "rle", classes={"COVID": 1})
    for a, b in zip(plain, rle):
        np.testing.assert_array_equal(a.load(), b.load())


def test_compressed_pixel_data_without_a_decoder_names_the_dicom_extra(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import HTJ2KLossless

    if get_decoder(HTJ2KLossless).is_available:
        pytest.skip("an HTJ2K decoder is installed here")
    path = write_slice(tmp_path / "COVID" / "p1" / "a.dcm", ct_slice(), 0.0, 1, "1.2.3")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(SourceError, match=r"\[dicom\] extra") as err:
        read_source("dicom", tmp_path, classes={"COVID": 1})
    assert "a.dcm" in str(err.value) and "High-Throughput JPEG 2000" in str(err.value)


def test_dicom_without_pixel_data_mixed_series_and_non_dicom_are_reported_together(tmp_path):
    write_series(tmp_path / "COVID" / "p1", [0.0, 1.0])
    write_slice(tmp_path / "COVID" / "p1" / "report.dcm", ct_slice(), 5.0, 9, "1.2.3", pixels=False)
    write_series(tmp_path / "COVID" / "p2", [0.0, 1.0], series_uid="1.2.3.4")
    write_series(tmp_path / "COVID" / "p2", [0.5], names=["other.dcm"], series_uid="1.2.3.5")
    (tmp_path / "COVID" / "p3").mkdir()
    (tmp_path / "COVID" / "p3" / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(SourceError) as err:
        read_source("dicom", tmp_path, classes={"COVID": 1})
    text = str(err.value)
    assert "report.dcm: no pixel data" in text
    assert "2 series mixed in one patient folder" in text and "1.2.3.4 (2 files)" in text and "1.2.3.5 (1 files)" in text
    assert "junk.dcm: not a readable DICOM file" in text
    assert "nothing was evaluated" in text


def test_class_folders_the_map_does_not_name_are_listed(tmp_path):
    write_scans(tmp_path, {"COVID": ["p1"], "CAP": ["c1"], "Mystery": ["m1"]}, n=1)
    with pytest.raises(SourceError) as err:
        read_source("dicom", tmp_path, classes={"COVID": 1, "CAP": 0})
    assert "does not name: Mystery" in str(err.value) and "Found folders: CAP, COVID, Mystery" in str(err.value)
    # mapping it to null skips it on purpose
    records, _ = read_source("dicom", tmp_path, classes={"COVID": 1, "CAP": 0, "Mystery": None})
    assert {r.patient for r in records} == {"COVID/p1", "CAP/c1"}
    with pytest.raises(SourceError, match="in the map but not on disk: Normal"):
        read_source("dicom", tmp_path, classes={"COVID": 1, "CAP": 0, "Mystery": None, "Normal": 0})


def test_slice_selection_keeps_slices_with_lungs_and_positions_count_all_slices(tmp_path):
    write_series(tmp_path / "COVID" / "p1", [0.0, 1.0, 2.0, 3.0], lungs=[False, True, True, False])
    every, _ = read_source("dicom", tmp_path, classes={"COVID": 1}, slices="all")
    lungs, notes = read_source("dicom", tmp_path, classes={"COVID": 1}, slices="lungs")
    assert len(every) == 4
    assert [r.position for r in lungs] == [1, 2]
    assert "kept 2 of 4 slices" in notes[0]
    with pytest.raises(SourceError, match="slices='some'"):
        read_source("dicom", tmp_path, classes={"COVID": 1}, slices="some")


def test_slice_labels_from_a_csv(tmp_path):
    files = write_series(tmp_path / "COVID" / "p1", [0.0, 1.0, 2.0])
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "slice_label"])
        w.writerow([files[0].relative_to(tmp_path).as_posix(), 1])
        w.writerow([files[1].relative_to(tmp_path).as_posix(), 0])
    records, _ = read_source("dicom", tmp_path, classes={"COVID": 1}, slice_labels="labels.csv")
    got = {r.key: r.slice_label for r in records}
    assert got == {files[0].relative_to(tmp_path).as_posix(): 1, files[1].relative_to(tmp_path).as_posix(): 0,
                   files[2].relative_to(tmp_path).as_posix(): None}


def test_no_images_is_an_error(tmp_path):
    (tmp_path / "COVID" / "p1").mkdir(parents=True)
    with pytest.raises(SourceError, match="no .dcm files"):
        read_source("dicom", tmp_path, classes={"COVID": 1})
    (tmp_path / "COVID" / "p1" / "a.txt").write_text("x")
    with pytest.raises(SourceError, match="no images"):
        read_source("image_folder", tmp_path, classes={"COVID": 1})
    with pytest.raises(SourceError, match="not a directory"):
        read_source("image_folder", tmp_path / "nowhere", classes={"COVID": 1})


@pytest.mark.skipif(not (MD_SAMPLE / "slices.csv").is_file(), reason=f"COVID-CT-MD sample not found at {MD_SAMPLE}")
def test_the_covid_ct_md_sample_reads_in_slice_location_order_with_its_published_labels():
    classes = {"COVID-19 subjects": 1, "Cap subjects": 0, "Normal subjects": 0}
    records, notes = read_source("dicom", MD_SAMPLE, classes=classes, slice_labels="covid_ct_md")
    assert len(records) == 297 and notes == []
    with open(MD_SAMPLE / "slices.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rank = {r["file"]: int(r["rank_ascending"]) for r in rows}
    for patient in {r.patient for r in records}:
        ranks = [rank[r.key] for r in records if r.patient == patient]
        assert ranks == sorted(ranks)  # our order is the publishers' SliceLocation order
    p001 = [r for r in records if r.patient == "COVID-19 subjects/P001"]
    labels = np.load(MD_SAMPLE / "Slice-level-labels-updated-1.npy")  # row 0 = P001 (Index.csv)
    assert [r.slice_label for r in p001] == [int(labels[0, rank[r.key]] > 0) for r in p001]
    assert p001[0].slice_label == 0 and sum(r.slice_label for r in p001) > 30  # rank 25 unlabelled, infection from rank 26
    assert all(r.slice_label is None for r in records if r.patient.startswith("Normal"))  # normal scans have no labels
    grey = p001[len(p001) // 2].load()
    assert grey.shape == (512, 512) and 0.0 <= grey.min() and grey.max() <= 1.0


# --- image folders --------------------------------------------------------------------------------------------
def write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_image_folder_reads_every_format_and_bit_depth_with_patients(tmp_path):
    grey8 = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    write_image(tmp_path / "covid" / "pA" / "s1.png", grey8)
    write_image(tmp_path / "covid" / "pA" / "s2.bmp", np.stack([grey8] * 3, -1))
    Image.fromarray(grey8).convert("RGB").save(tmp_path / "covid" / "pA" / "s3.jpg", quality=100)
    write_image(tmp_path / "covid" / "pB" / "deep" / "s1.tif", grey8.astype(np.uint16) * 16)  # 16-bit file, 12-bit values
    write_image(tmp_path / "healthy" / "pC" / "x.png", np.full((64, 64), 65535, np.uint16))  # 16-bit PNG, full range
    (tmp_path / "healthy" / "pC" / "notes.txt").write_text("not an image")
    records, notes = read_source("image_folder", tmp_path, classes={"covid": 1, "healthy": 0}, patient_level=0)
    got = {r.key: r for r in records}
    assert set(got) == {"covid/pA/s1.png", "covid/pA/s2.bmp", "covid/pA/s3.jpg", "covid/pB/deep/s1.tif", "healthy/pC/x.png"}
    assert got["covid/pB/deep/s1.tif"].patient == "covid/pB" and got["healthy/pC/x.png"].label == 0
    expected = grey8 / 255.0
    for key in ("covid/pA/s1.png", "covid/pA/s2.bmp"):
        np.testing.assert_allclose(got[key].load(), expected, atol=1e-6)
    np.testing.assert_allclose(got["covid/pA/s3.jpg"].load(), expected, atol=0.02)
    # 16-bit: 12-bit values are scaled by 4095, not 65535 (not darkened); full 16-bit range reaches 1
    np.testing.assert_allclose(got["covid/pB/deep/s1.tif"].load(), grey8.astype(float) * 16 / 4095.0, atol=1e-6)
    assert got["healthy/pC/x.png"].load().max() == pytest.approx(1.0)
    with Image.open(tmp_path / "covid" / "pB" / "deep" / "s1.tif") as im, Image.open(tmp_path / "healthy" / "pC" / "x.png") as im2:
        assert im.mode.startswith("I;16") and im2.mode.startswith("I")  # really 16-bit files
    assert all(r.load().dtype == np.float32 for r in records)
    assert notes[0].endswith("not images, not read: 1 x .txt")
    with pytest.raises(SourceError, match="no folder at patient_level=1"):
        read_source("image_folder", tmp_path, classes={"covid": 1, "healthy": 0}, patient_level=1)


def test_image_folder_unknown_class_folder_and_bad_label(tmp_path):
    write_image(tmp_path / "covid" / "a.png", np.zeros((32, 32), np.uint8))
    write_image(tmp_path / "other" / "b.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(SourceError, match="does not name: other"):
        read_source("image_folder", tmp_path, classes={"covid": 1})
    with pytest.raises(SourceError, match="must be 1 \\(COVID\\) or 0"):
        read_source("image_folder", tmp_path, classes={"covid": 1, "other": 2})
    with pytest.raises(SourceError, match="no class map"):
        read_source("image_folder", tmp_path)


def test_semiseg_and_covid_ct_kinds(tmp_path, synthetic_root):
    for n in (10, 2, 1):
        write_image(tmp_path / "images" / f"{n}.jpg", np.full((32, 32), 100, np.uint8))
    records, _ = read_source("semiseg", tmp_path)
    assert [r.key for r in records] == ["images/1.jpg", "images/2.jpg", "images/10.jpg"]
    assert {r.label for r in records} == {1} and records[0].patient is None
    test, _ = read_source("covid_ct", synthetic_root, split="test")
    assert len(test) == 16 and sorted({r.label for r in test}) == [0, 1]
    assert test[0].key.startswith("Images-processed/CT_COVID/")
    with pytest.raises(SourceError, match="Unknown set kind"):
        read_source("nifti", tmp_path)
