"""``dicom``: chest CT series, ``<root>/<class folder>/<patient>/*.dcm``, read with pydicom.

Needs the ``[dicom]`` extra (``pip install -e ".[dicom]"``: pydicom, pylibjpeg, pylibjpeg-libjpeg), which
decodes uncompressed, RLE, JPEG baseline/extended/lossless and JPEG-LS pixel data; other compressed
transfer syntaxes need GDCM or another pydicom plugin (the error names what pydicom says is missing).

What a slice becomes:

1. Hounsfield units by pydicom's modality LUT (``RescaleSlope``/``RescaleIntercept``, or a Modality LUT Sequence;
   :mod:`covidnet.images.sources.dicom_files`). Where a file lacks them, the stored values are taken as they are (a
   missing one of the two is taken as 1 or 0) and a note says so: raw scanner values would put HU 1024 too high.
   The file's own display window (VOI LUT) is not used: every set goes through one stated window, below.
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
folder, and an order key. Files that are no slice of the series (ImageType LOCALIZER, or another orientation
than most of the series) are left out before that and named in the notes.
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np

from covidnet.images.sources.base import Record, SourceError, class_folders, dangling_links, parse_class_map
from covidnet.images.sources.dicom_files import Header, header, localizers, pydicom_module, read_hu

DEFAULT_WINDOW = {"width": 1500.0, "level": -600.0}
SLICE_SELECTIONS = ("all", "lungs")


def window_to_unit(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """HU -> float32 grey in [0, 1]: ``level - width/2`` maps to 0, ``level + width/2`` to 1, clipped."""
    low = level - width / 2.0
    return np.clip((np.asarray(hu, np.float32) - np.float32(low)) / np.float32(width), 0.0, 1.0).astype(np.float32)


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


def order_slices(headers: list[Header], where: str, notes: list[str], problems: list[str]) -> list[Header]:
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


def extension_override(extensions: tuple[str, ...]) -> str:
    """The command-line setting that reads files without an extension too. The set's config does not name
    ``read.extensions``, so Hydra takes it only with ``++``; ``<set>`` is the set's name (covidnet.data.sets fills it in)."""
    listed = ",".join(f"'{e}'" for e in (*extensions, ""))
    return f'"++eval.<set>.read.extensions=[{listed}]" (evaluate.py)'


def rescale_notes(root: Path, headers: list[Header]) -> list[str]:
    """One note per assumption made for slices without a rescale (dicom_files.rescale_assumption), with how many and
    where: HU that rest on a guess must not look like measured ones."""
    notes = []
    for assumption in sorted({h.rescale for h in headers if h.rescale}):
        hit = [h for h in headers if h.rescale == assumption]
        raw = " They store unsigned values, as scanners storing raw values (HU + 1024) do." if all(h.unsigned for h in hit) else ""
        notes.append(f"dicom set at {root}: {len(hit)} of {len(headers)} slices (e.g. {hit[0].path.relative_to(root).as_posix()}) have "
                     f"{assumption}; if this scanner stores raw values, HU would be off by 1024 and the window would show other "
                     f"tissue.{raw}")
    return notes


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
    pydicom_module()
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
    patients: list[tuple[str, int, str, list[Header]]] = []
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
                hint = f"; DICOM files without an extension are read with {extension_override(extensions)}" if bare else ""
                notes.append(f"{where}: {len(others)} file(s) not read, not {'/'.join(extensions)} (e.g. {others[0].name}){hint}")
            if not files:
                bare = any(p.suffix == "" for p in others)
                problems.append(f"{pdir}: no {'/'.join(extensions)} files" + (f" (files without an extension: pass {extension_override(extensions)})"
                                                                                 if bare else ""))
                continue
            headers = [h for h in (header(p, problems) for p in files) if h is not None]
            for h in headers:
                if h.uid is not None and h.uid in seen_uids:
                    problems.append(f"{h.path}: the same slice as {seen_uids[h.uid]} (SOPInstanceUID {h.uid}), a copy under another "
                                    "name; it would be counted twice: remove one")
                elif h.uid is not None:
                    seen_uids[h.uid] = h.path
            headers, left_out = localizers(headers)
            if left_out:
                notes.append(f"{where}: {len(left_out)} file(s) left out, not slices of the series: {'; '.join(left_out)}")
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
    notes += rescale_notes(root, [h for _, _, _, ordered in patients for h in ordered])
    if slices == "lungs":
        notes.append(f"dicom set at {root}: slices=lungs kept {len(records)} of {len(records) + skipped} slices")
    if by_file and not any(r.slice_label is not None for r in records):
        notes.append(f"dicom set at {root}: slice_labels matched no file")
    return records, notes
