"""What one DICOM file of a CT series holds, checked before any pixel is decoded, and its pixels in Hounsfield units.

:func:`header` reads a file's header (pixel data located, not read) and names what makes it unusable: not DICOM,
no pixels, colour, several frames, cut short, or compressed without a decoder. :func:`localizers` finds the files of a
series that are no axial slice of it (scout / localizer images, or another orientation than most of the series).
:func:`read_hu` decodes one slice to HU with pydicom's own modality LUT (``RescaleSlope``/``RescaleIntercept`` or a
Modality LUT Sequence); :func:`rescale_assumption` says what was assumed where a file lacks them.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covidnet.images.covid_ct_layout import MAX_PIXELS, MIN_SIDE
from covidnet.images.sources.base import SourceError

EXTRA = 'pip install -e ".[dicom]" (pydicom, pylibjpeg, pylibjpeg-libjpeg)'
# the axis a slice's normal points along -> the name of that orientation
PLANES = ("sagittal", "coronal", "axial")


def pydicom_module():
    try:
        import pydicom
    except ImportError as err:
        raise SourceError(f"Reading DICOM needs pydicom: {EXTRA}.") from err
    return pydicom


@contextlib.contextmanager
def quiet(pydicom):
    """No warning per file for values that break the DICOM standard but not the image (e.g. UIDs that are UUIDs,
    as in COVID-CT-MD): pydicom would print one for every slice."""
    settings = pydicom.config.settings
    before = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode = before


@dataclass
class Header:
    path: Path
    series: str | None
    slice_location: float | None
    normal_position: float | None
    instance: int | None
    uid: str | None = None  # SOPInstanceUID: the same slice under two file names has the same one
    image_type: tuple[str, ...] = ()  # e.g. ORIGINAL, PRIMARY, LOCALIZER
    plane: str | None = None  # the orientation's name (axial, coronal, sagittal); None without ImageOrientationPatient
    rescale: str | None = None  # what was assumed for a missing rescale (rescale_assumption); None: nothing
    unsigned: bool = field(default=False)  # PixelRepresentation 0: raw scanner values are stored so


def _float(value) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _normal_position(ds) -> float | None:
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is None or len(ipp) != 3:
        return None
    if iop is not None and len(iop) == 6:
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
        if np.linalg.norm(normal) > 0:
            return float(np.dot(np.asarray(ipp, float), normal))
    return float(ipp[2])  # no orientation: assume axial slices


def header(path: Path, problems: list[str]) -> Header | None:
    pydicom = pydicom_module()
    with quiet(pydicom):
        return _read_header(pydicom, path, problems)


def _read_header(pydicom, path: Path, problems: list[str]) -> Header | None:
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, defer_size="1 KB")  # pixel data is located, not read
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        problems.append(f"{path}: not a readable DICOM file ({type(err).__name__}: {str(err)[:120]})")
        return None
    sop = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    kind = getattr(sop, "name", "") or ""
    pixel_tag = next((tag for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if tag in ds), None)
    if pixel_tag is None:
        if "Image Storage" in kind or ("Rows" in ds and "Columns" in ds):  # an image without its pixels: most often cut short
            problems.append(f"{path}: no pixel data ({kind or 'an image header'} without its pixels): the file is truncated "
                            f"({path.stat().st_size} bytes), or it holds no image; copy it again from the source, or remove it")
        else:
            problems.append(f"{path}: no pixel data (a DICOM without an image, e.g. a report or structured document); remove it from the folder")
        return None
    samples, photometric = int(ds.get("SamplesPerPixel", 1) or 1), str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples != 1 or not photometric.startswith("MONOCHROME"):
        problems.append(f"{path}: a colour image ({photometric}, {samples} samples per pixel), not a CT slice in Hounsfield units; "
                        "remove it (e.g. a secondary capture or screenshot)")
        return None
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > MAX_PIXELS or min(rows, cols) < MIN_SIDE:
        problems.append(f"{path}: a stored image of {rows}x{cols} pixels is not a CT slice (at least {MIN_SIDE} px a side, at most "
                        f"{MAX_PIXELS // 1_000_000} M pixels); remove it or fix its header")
        return None
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_compressed:  # the pixels' size is known: a file cut short holds fewer
        needed = rows * cols * samples * (int(ds.get("BitsAllocated", 16) or 16) // 8)
        item = ds.get_item(pixel_tag)
        if getattr(item, "value_tell", None) is not None and item.length is not None:  # deferred: where it would end
            held = min(item.length, path.stat().st_size - item.value_tell)
        else:
            held = len(item.value or b"") if isinstance(item.value, (bytes, bytearray)) else needed
        if held < needed:
            problems.append(f"{path}: its pixel data holds {held} of the {needed} bytes of a {rows}x{cols} image: the file is "
                            "truncated; copy it again from the source")
            return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        problems.append(f"{path}: {frames} frames in one file; this reader takes one slice per file")
        return None
    if syntax is not None and syntax.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies) if decoder is not None else "no pydicom decoder exists"
            problems.append(f"{path}: compressed pixel data ({syntax.name}) and no decoder installed for it. Install the "
                            f"[dicom] extra: {EXTRA}; pydicom says it needs: {missing}")
            return None
    instance = ds.get("InstanceNumber")
    return Header(path, str(ds.get("SeriesInstanceUID")) if ds.get("SeriesInstanceUID") else None,
                  _float(ds.get("SliceLocation")), _normal_position(ds), int(instance) if instance not in (None, "") else None,
                  str(ds.get("SOPInstanceUID")) if ds.get("SOPInstanceUID") else None,
                  tuple(str(v).upper() for v in _values(ds.get("ImageType"))), plane(ds), rescale_assumption(ds),
                  int(ds.get("PixelRepresentation", 0) or 0) == 0)


def _values(value) -> list:
    """A DICOM value as a list (a multi-valued element, one value, or nothing)."""
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]


def plane(ds) -> str | None:
    """axial, coronal or sagittal: the axis the slice normal (row x column of ImageOrientationPatient) points along most."""
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    normal = np.abs(np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float)))
    return PLANES[int(np.argmax(normal))] if normal.max() > 0 else None


def localizers(headers: list[Header]) -> tuple[list[Header], list[str]]:
    """The headers that are slices of the series, and one reason per file left out: ImageType LOCALIZER (a scout
    image), or an orientation other than most of the series' (a localizer without that word). Scoring a scout as a
    slice would add an image of another kind to the patient's score."""
    reasons = {h.path: "ImageType LOCALIZER (a scout image)" for h in headers if "LOCALIZER" in h.image_type}
    planes = Counter(h.plane for h in headers if h.path not in reasons and h.plane is not None)
    if planes:
        (majority, n), *rest = planes.most_common()
        if not rest or rest[0][1] < n:  # a tie names no majority: every slice is kept
            reasons |= {h.path: f"{h.plane}, while {n} slices of the series are {majority}"
                        for h in headers if h.path not in reasons and h.plane not in (None, majority)}
    return [h for h in headers if h.path not in reasons], [f"{p.name} ({why})" for p, why in reasons.items()]


def rescale_assumption(ds) -> str | None:
    """What a slice's HU rest on where the file does not say: None when it has both RescaleSlope and RescaleIntercept
    (or a Modality LUT Sequence). pydicom's modality LUT leaves the stored values as they are when either is absent."""
    if ds.get("ModalityLUTSequence"):
        return None
    slope, intercept = _float(ds.get("RescaleSlope")), _float(ds.get("RescaleIntercept"))
    if slope is not None and intercept is not None:
        return None
    if slope is None and intercept is None:
        return "no RescaleSlope/RescaleIntercept: values taken as stored (HU)"
    return "no RescaleSlope: taken as 1" if slope is None else "no RescaleIntercept: taken as 0"


def read_hu(path: Path) -> np.ndarray:
    """One slice in Hounsfield units (float32 H x W), by pydicom's modality LUT. A file with only one of RescaleSlope
    and RescaleIntercept gets the other's neutral value (1 or 0), as :func:`rescale_assumption` says; pydicom would
    otherwise drop the one that is there."""
    from pydicom.pixels import apply_modality_lut

    pydicom = pydicom_module()
    with quiet(pydicom):
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except Exception as err:
            raise SourceError(f"{path}: pixel data cannot be decoded ({type(err).__name__}: {str(err)[:200]}). If it is compressed: {EXTRA}.") from err
        slope, intercept = _float(ds.get("RescaleSlope")), _float(ds.get("RescaleIntercept"))
        if not ds.get("ModalityLUTSequence") and (slope is None) != (intercept is None):
            ds.RescaleSlope, ds.RescaleIntercept = (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)
        elif slope is None and intercept is None:  # empty values: pydicom would fail on them; the stored values stand
            for tag in ("RescaleSlope", "RescaleIntercept"):
                if tag in ds:
                    del ds[tag]
        return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
