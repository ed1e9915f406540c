"""Synthetic chest-CT-like DICOM series written with pydicom, for the reader and evaluate tests.

A slice is a body disc (40 HU) holding two lungs (-850 HU) or, for "no lung" slices, solid tissue; a 4x4
marker in the top-left corner holds ``marker_hu`` so a test can tell slices apart after windowing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 48
SHUFFLED = np.array([2, 0, 3, 1])

# COVID-CT-MD's folder names (conf/eval/covid_ct_md.yaml's class map applies as it is), five patients
MD_FOLDERS = {"COVID-19 subjects": ["p1", "p2"], "Cap subjects": ["c1"], "Normal subjects": ["n1", "n2"]}


def ct_slice(lungs: bool = True, marker_hu: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    hu = np.full((SIZE, SIZE), -1000.0)
    hu[(yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 <= (0.45 * SIZE) ** 2] = 40.0
    if lungs:
        for cx in (0.33, 0.67):
            hu[((yy - SIZE / 2) / (0.3 * SIZE)) ** 2 + ((xx - cx * SIZE) / (0.12 * SIZE)) ** 2 <= 1] = -850.0
    hu[:4, :4] = marker_hu
    return hu


def write_slice(
    path: Path,
    hu: np.ndarray,
    z: float,
    instance: int,
    series_uid: str,
    slice_location: bool = True,
    position: bool = True,
    slope: float = 1.0,
    intercept: float = -1024.0,
    syntax=None,
    pixels: bool = True,
    rescale: tuple[str, ...] = ("RescaleSlope", "RescaleIntercept"),
    image_type: list[str] | None = None,
    orientation: list[float] | None = None,
) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    if slice_location:
        ds.SliceLocation = z
    if position:
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.ImageOrientationPatient = orientation or [1, 0, 0, 0, 1, 0]
    if image_type:
        ds.ImageType = image_type
    if "RescaleSlope" in rescale:  # the stored values are computed with both either way: a file may leave one out
        ds.RescaleSlope = slope
    if "RescaleIntercept" in rescale:
        ds.RescaleIntercept = intercept
    if pixels:
        stored = np.round((hu - intercept) / slope).astype(np.uint16)
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = stored.tobytes()
        if syntax is not None:
            ds.compress(syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(folder: Path, zs: list[float], names: list[str] | None = None, lungs: list[bool] | None = None, series_uid: str | None = None,
                 **kwargs) -> list[Path]:
    """One series: slice i at z = zs[i], file names[i], marker HU = 10 * z (so order is visible in the pixels)."""
    from pydicom.uid import generate_uid

    uid = series_uid or generate_uid()
    names = names or [f"{i:03d}.dcm" for i in range(len(zs))]
    lungs = lungs or [True] * len(zs)
    return [
        write_slice(folder / name, ct_slice(lung, 10.0 * z), z, instance=len(zs) - i, series_uid=uid, **kwargs)
        for i, (z, name, lung) in enumerate(zip(zs, names, lungs))
    ]


def write_scans(root: Path, patients: dict[str, list[str]] | None = None, n: int = 4, **kwargs) -> Path:
    """``root/<class folder>/<patient>/*.dcm``; file names deliberately not in slice order."""
    patients = patients or {"COVID": ["p1", "p2"], "CAP": ["c1"], "Normal": ["n1", "n2"]}
    for folder, ids in patients.items():
        for k, pid in enumerate(ids):
            zs = [float(z) for z in np.roll(SHUFFLED[:n] if n == 4 else np.arange(n)[::-1], k)]  # never in name order
            write_series(root / folder / pid, zs, **kwargs)
    return root
