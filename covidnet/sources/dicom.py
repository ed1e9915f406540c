"""``dicom``: chest CT series, ``<root>/<class folder>/<patient>/*.dcm``, read with pydicom.

Needs the ``[dicom]`` extra (``pip install -e ".[dicom]"``: pydicom, pylibjpeg, pylibjpeg-libjpeg), which
decodes uncompressed, RLE, JPEG baseline/extended/lossless and JPEG-LS pixel data; other compressed
transfer syntaxes need GDCM or another pydicom plugin (the error names what pydicom says is missing).

What a slice becomes:

1. Hounsfield units: ``HU = stored value * RescaleSlope + RescaleIntercept`` (1 and 0 when absent).
2. A window (default the lung window, width 1500 / level -600, i.e. -1350 to 150 HU) mapped linearly onto
   ``[0, 1]`` and clipped: the float grey image the model's preprocessing expects. Figure-crop training
   images carry whatever window their paper used; a lung window is the common choice for COVID figures.

Slice order (``Record.position``, 0 = first): ascending ``SliceLocation``; where a patient's slices lack it,
ascending position along the slice normal (``ImagePositionPatient`` projected on the cross product of
``ImageOrientationPatient``'s row and column directions), else ascending ``InstanceNumber``. Each fallback is
reported in the notes (printed by evaluate.py, kept in metrics.json). File names are never used: COVID-CT-MD's
publishers warn that they do not give the order.

Slice selection: ``slices=all`` (every file), or ``slices=lungs``: only slices where lungs are visible, i.e.
air (below ``lung_hu`` = -400 HU) covers more than ``lung_fraction`` (15 %) of the body (the filled region above
-500 HU). ``lungs`` decodes every slice once while listing.

Slice-level labels (optional, ``slice_labels=``): a CSV with columns ``file`` (path relative to ``root``) and
``slice_label`` (1 = infection visible on the slice, 0 = not), or ``covid_ct_md``: the published
``Slice-level-labels-updated-1.npy`` + ``Index.csv`` of COVID-CT-MD, indexed by each slice's rank in its
*full* scan, which this reader takes from the ``rank_ascending`` column of ``slices.csv`` (a subset of a scan's
files has different ranks than the full scan, so the rank cannot be recomputed from the folder).

Checked for every file before anything is decoded, all problems reported together: readable DICOM, pixel
data present, a single frame, a pydicom decoder installed for its transfer syntax, one series per patient
folder, and an order key.
"""

from __future__ import annotations

import contextlib
import csv
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from covidnet.covid_ct_layout import MAX_PIXELS, MIN_SIDE
from covidnet.sources.base import Record, SourceError, class_folders, dangling_links, parse_class_map

EXTRA = 'pip install -e ".[dicom]" (pydicom, pylibjpeg, pylibjpeg-libjpeg)'
DEFAULT_WINDOW = {"width": 1500.0, "level": -600.0}
SLICE_SELECTIONS = ("all", "lungs")


def _pydicom():
    try:
        import pydicom
    except ImportError as err:
        raise SourceError(f"Reading DICOM needs pydicom: {EXTRA}.") from err
    return pydicom


@contextlib.contextmanager
def _quiet(pydicom):
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
class _Header:
    path: Path
    series: str | None
    slice_location: float | None
    normal_position: float | None
    instance: int | None
    uid: str | None = None  # SOPInstanceUID: the same slice under two file names has the same one


def window_to_unit(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """HU -> float32 grey in [0, 1]: ``level - width/2`` maps to 0, ``level + width/2`` to 1, clipped."""
    low = level - width / 2.0
    return np.clip((np.asarray(hu, np.float32) - np.float32(low)) / np.float32(width), 0.0, 1.0).astype(np.float32)


def read_hu(path: Path) -> np.ndarray:
    """One slice in Hounsfield units (float32 H x W)."""
    pydicom = _pydicom()
    with _quiet(pydicom):
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except Exception as err:
            raise SourceError(f"{path}: pixel data cannot be decoded ({type(err).__name__}: {str(err)[:200]}). If it is compressed: {EXTRA}.") from err
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def load_windowed(path: Path, width: float, level: float) -> np.ndarray:
    return window_to_unit(read_hu(path), width, level)


def lungs_visible(hu: np.ndarray, lung_hu: float = -400.0, lung_fraction: float = 0.15) -> bool:
    """Air inside the body (holes of the region above -500 HU filled) covers more than ``lung_fraction`` of it."""
    from scipy import ndimage

    body = ndimage.binary_fill_holes(hu > -500)
    n_body = int(body.sum())
    if n_body == 0:
        return False
    return float((body & (hu < lung_hu)).sum()) > lung_fraction * n_body


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


def _header(path: Path, problems: list[str]) -> _Header | None:
    pydicom = _pydicom()
    with _quiet(pydicom):
        return _read_header(pydicom, path, problems)


def _read_header(pydicom, path: Path, problems: list[str]) -> _Header | None:
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
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
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
    return _Header(path, str(ds.get("SeriesInstanceUID")) if ds.get("SeriesInstanceUID") else None,
                   _float(ds.get("SliceLocation")), _normal_position(ds), int(instance) if instance not in (None, "") else None,
                   str(ds.get("SOPInstanceUID")) if ds.get("SOPInstanceUID") else None)


def order_slices(headers: list[_Header], where: str, notes: list[str], problems: list[str]) -> list[_Header]:
    """Ascending SliceLocation, else position along the slice normal, else InstanceNumber (each fallback noted)."""
    for attr, name in (("slice_location", "SliceLocation"), ("normal_position", "ImagePositionPatient"), ("instance", "InstanceNumber")):
        values = [getattr(h, attr) for h in headers]
        if all(v is not None for v in values):
            if name != "SliceLocation":
                lacking = sum(h.slice_location is None for h in headers)
                notes.append(f"{where}: {lacking} of {len(headers)} slices lack SliceLocation; ordered by {name} instead")
            return sorted(headers, key=lambda h: (getattr(h, attr), h.path.name))
    problems.append(f"{where}: cannot order the slices (some lack SliceLocation, ImagePositionPatient and InstanceNumber)")
    return headers


def covid_ct_md_slice_labels(root: Path) -> dict[str, int]:
    """COVID-CT-MD's published slice labels keyed by file (relative to ``root``), via slices.csv's ``rank_ascending``."""
    index, ranks = root / "Index.csv", root / "slices.csv"
    npy = next((root / n for n in ("Slice-level-labels-updated-1.npy", "Slice-level-labels.npy") if (root / n).is_file()), None)
    missing = [str(p) for p in (index, ranks) if not p.is_file()] + ([] if npy else [str(root / "Slice-level-labels-updated-1.npy")])
    if missing:
        raise SourceError(f"slice_labels=covid_ct_md needs {', '.join(missing)}; pass slice_labels=null or a CSV (file, slice_label).")
    labels = np.load(npy)
    with open(index, newline="") as f:
        row_of = {r["Folder/ID"]: int(r["Label Index"]) for r in csv.DictReader(f)}
    out: dict[str, int] = {}
    with open(ranks, newline="") as f:
        for r in csv.DictReader(f):
            if r["patient"] in row_of:
                out[r["file"]] = int(labels[row_of[r["patient"]], int(r["rank_ascending"])] > 0)
    return out


def _slice_labels(root: Path, option) -> dict[str, int]:
    if option in (None, "", False):
        return {}
    if option == "covid_ct_md":
        return covid_ct_md_slice_labels(root)
    path = Path(option).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise SourceError(f"slice_labels={option}: {path} not found; pass a CSV with columns file, slice_label (or covid_ct_md).")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"file", "slice_label"} <= set(reader.fieldnames or []):
            raise SourceError(f"{path}: needs columns file, slice_label; has {reader.fieldnames}.")
        out = {}
        for r in reader:
            try:
                out[r["file"]] = int(r["slice_label"])
            except (TypeError, ValueError):
                raise SourceError(f"{path}, line {reader.line_num}: slice_label={r['slice_label']!r} for {r['file']!r} is not 0 or 1; "
                                  "each row gives 1 (infection visible on the slice) or 0.") from None
            if out[r["file"]] not in (0, 1):
                raise SourceError(f"{path}, line {reader.line_num}: slice_label={out[r['file']]} for {r['file']!r} is not 0 or 1.")
        return out


def read(
    root: Path,
    classes: dict | None = None,
    window: dict | None = None,
    slices: str = "all",
    lung_hu: float = -400.0,
    lung_fraction: float = 0.15,
    slice_labels: str | None = None,
    extensions: tuple[str, ...] | list[str] = (".dcm",),
) -> tuple[list[Record], list[str]]:
    _pydicom()
    window = {**DEFAULT_WINDOW, **dict(window or {})}
    width, level = float(window["width"]), float(window["level"])
    if width <= 0:
        raise SourceError(f"dicom set: window.width={width} must be positive (HU).")
    if slices not in SLICE_SELECTIONS:
        raise SourceError(f"dicom set: slices={slices!r}; choose one of {', '.join(SLICE_SELECTIONS)}.")
    extensions = tuple(e.lower() for e in extensions)
    found = class_folders(root)
    class_map = parse_class_map(classes or {}, root, found, "dicom set")
    by_file = _slice_labels(root, slice_labels)
    problems: list[str] = []
    notes: list[str] = []
    patients: list[tuple[str, int, str, list[_Header]]] = []
    seen_uids: dict[str, Path] = {}
    for folder, (label, diagnosis) in class_map.items():
        loose = [p.name for p in (root / folder).iterdir() if p.is_file() and p.suffix.lower() in extensions]
        if loose:
            problems.append(f"{root / folder}: DICOM files directly in the class folder ({', '.join(loose[:3])}...); "
                            "put each patient's series in its own folder <class folder>/<patient>/")
        patient_dirs = sorted(p for p in (root / folder).iterdir() if p.is_dir() and not p.name.startswith("."))
        if not patient_dirs and not loose:
            problems.append(f"{root / folder}: no patient folders")
        for pdir in patient_dirs:
            entries = list(pdir.iterdir())
            files = sorted(p for p in entries if p.is_file() and p.suffix.lower() in extensions)
            where = f"{folder}/{pdir.name}"
            problems += dangling_links(entries)
            nested = sorted(p.name for p in entries if p.is_dir())
            if nested:
                problems.append(f"{pdir}: folder(s) inside a patient folder ({', '.join(nested[:3])}), which this reader would not read; "
                                "give each series its own patient folder <class folder>/<patient>/*.dcm")
            others = sorted(p for p in entries if p.is_file() and p not in files and not p.name.startswith("."))
            if others:
                bare = [p for p in others if p.suffix == ""]
                hint = (f"; DICOM files without an extension are read with read.extensions=[{', '.join(repr(e) for e in extensions)}, '']"
                        if bare else "")
                notes.append(f"{where}: {len(others)} file(s) not read, not {'/'.join(extensions)} (e.g. {others[0].name}){hint}")
            if not files:
                problems.append(f"{pdir}: no {'/'.join(extensions)} files" + (" (files without an extension: pass read.extensions=['.dcm', ''])"
                                                                                 if any(p.suffix == "" for p in others) else ""))
                continue
            headers = [h for h in (_header(p, problems) for p in files) if h is not None]
            for h in headers:
                if h.uid is not None and h.uid in seen_uids:
                    problems.append(f"{h.path}: the same slice as {seen_uids[h.uid]} (SOPInstanceUID {h.uid}), a copy under another "
                                    "name; it would be counted twice: remove one")
                elif h.uid is not None:
                    seen_uids[h.uid] = h.path
            series = sorted({h.series for h in headers if h.series})
            if len(series) > 1:
                counts = ", ".join(f"{s} ({sum(h.series == s for h in headers)} files)" for s in series)
                problems.append(f"{pdir}: {len(series)} series mixed in one patient folder: {counts}. "
                                "Keep one series per patient folder (e.g. <patient>_<series>/).")
                continue
            if headers:
                patients.append((where, label, diagnosis, order_slices(headers, where, notes, problems)))
    if problems:
        shown = "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise SourceError(f"dicom set at {root}: {len(problems)} problem(s), nothing was evaluated:\n  {shown}")
    records: list[Record] = []
    skipped = 0
    for where, label, diagnosis, ordered in patients:
        for position, h in enumerate(ordered):
            if slices == "lungs" and not lungs_visible(read_hu(h.path), lung_hu, lung_fraction):
                skipped += 1
                continue
            key = h.path.relative_to(root).as_posix()
            records.append(Record(key=key, path=h.path, label=label, diagnosis=diagnosis, patient=where, position=position,
                                  slice_label=by_file.get(key), loader=partial(load_windowed, h.path, width, level)))
    if slices == "lungs":
        notes.append(f"dicom set at {root}: slices=lungs kept {len(records)} of {len(records) + skipped} slices")
    if by_file and not any(r.slice_label is not None for r in records):
        notes.append(f"dicom set at {root}: slice_labels matched no file")
    return records, notes
