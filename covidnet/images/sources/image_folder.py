"""``image_folder``: ``<root>/<class folder>/**/<image>`` with a map from class folder to COVID = 1 / non-COVID = 0.

Images: png, jpg/jpeg, tif/tiff, bmp, any mode (RGB, RGBA composited on black, palette, L, 16-bit), decoded by
:func:`covidnet.images.covid_ct_layout.load_grey` like the training images. 16-bit images are scaled by the bit depth their
values use (8, 10, 12 or 16 bits), not windowed. A floating-point image (e.g. a TIFF of Hounsfield units) is never
stretched to its own minimum and maximum: values within [0, 1] are taken as grey levels, any other values as
Hounsfield units through ``float_window`` (default the lung window, width 1500 / level -600, as for DICOM), and the
notes say which files were read so.

Every file found is read or named in a note with the reason: other files (e.g. ``.txt``, ``.csv``), hidden files,
and a second copy of an image (the same bytes under another name, counted once). Linked subfolders are followed
(and named); a link back into a folder already read is not read twice. The same image in two class folders, or a
link whose target is missing, is an error.

Patients: ``patient_level=k`` takes the patient id from the k-th folder below the class folder
(``<root>/COVID/<patient>/<file>`` is ``patient_level=0``); without it, each image is its own unit.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from covidnet.images.covid_ct_layout import DatasetError, load_grey
from covidnet.images.sources.base import Record, SourceError, class_folders, dangling_links, parse_class_map
from covidnet.images.sources.dicom import DEFAULT_WINDOW, window_to_unit

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def natural_key(path: Path) -> list:
    """``2.jpg`` before ``10.jpg``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.as_posix())]


def walk(folder: Path, notes: list[str]) -> list[Path]:
    """Every file below ``folder``, linked subfolders followed: a listing that skipped them would drop their images
    without a word. Each link followed is noted; a folder reached a second time (a loop, or two links to it) is
    noted and not read again, so no image is counted twice through it."""
    seen: set[str] = set()
    found: list[Path] = []
    for here, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:
            notes.append(f"{here}: the folder {real} again (through a symbolic link), not read twice")
            dirs[:] = []
            continue
        seen.add(real)
        for d in dirs:
            if os.path.islink(os.path.join(here, d)):
                notes.append(f"{os.path.join(here, d)}: a symbolic link to the folder {os.path.realpath(os.path.join(here, d))}, followed")
        found += [Path(here) / f for f in files]
    return found


def digest(path: Path) -> str:
    """The file's SHA-256: the same image under two names has the same bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def drop_copies(images: list[tuple[Path, str]], notes: list[str], problems: list[str]) -> list[tuple[Path, str]]:
    """``(path, class folder)`` pairs without second copies: the first name (natural order) is kept and each copy is
    noted, since a copy would count one image twice in every metric and interval. A copy in another class folder
    is a problem: one image cannot be both COVID and not."""
    first: dict[str, tuple[Path, str]] = {}
    kept = []
    for path, folder in images:
        key = digest(path)
        if key not in first:
            first[key] = (path, folder)
            kept.append((path, folder))
        elif first[key][1] == folder:
            notes.append(f"{path}: the same image (same bytes) as {first[key][0]}; counted once, under the first name")
        else:
            problems.append(f"{path}: the same image (same bytes) as {first[key][0]} in class folder {first[key][1]}; remove one")
    return kept


def is_float(path: Path) -> bool:
    """Whether the file holds floating-point pixels (a TIFF of Hounsfield units, say): read from the header only."""
    try:
        with Image.open(path) as im:
            return im.mode == "F"
    except (OSError, SyntaxError, ValueError):
        return False  # an undecodable file: load_grey names it when it is read


def float_as_hu(path: Path) -> bool:
    """Whether a float image's values are outside [0, 1], so they are taken as Hounsfield units, not grey levels."""
    with Image.open(path) as im:
        arr = np.asarray(im, dtype=np.float32)
    return not (np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0)


def load_hu(path: Path, width: float, level: float) -> np.ndarray:
    """A float image of Hounsfield units through the window (``level`` -/+ ``width``/2 -> 0..1), as a DICOM slice."""
    try:
        with Image.open(path) as im:
            return window_to_unit(np.nan_to_num(np.asarray(im, dtype=np.float32), nan=-1000.0), width, level)
    except OSError as err:
        raise DatasetError(f"{path}: cannot be decoded as an image ({err}). Replace the file or remove it.") from err


def float_loaders(paths: list[Path], window: dict, root: Path, notes: list[str]) -> dict[Path, partial]:
    """A windowed loader for each float image whose values are not grey levels, and a note naming them and the window."""
    width, level = float(window["width"]), float(window["level"])
    if width <= 0:
        raise SourceError(f"image_folder set: float_window.width={width} must be positive (HU).")
    hu = [p for p in paths if is_float(p) and float_as_hu(p)]
    if hu:
        notes.append(f"image_folder set at {root}: {len(hu)} floating-point image(s) (e.g. {hu[0].name}) have values outside [0, 1] and "
                     f"were read as Hounsfield units through the window {level - width / 2:g} to {level + width / 2:g} HU "
                     "(read.float_window={width, level} sets it)")
    return {p: partial(load_hu, p, width, level) for p in hu}


def read(root: Path, classes: dict | None = None, patient_level: int | None = None,
         float_window: dict | None = None) -> tuple[list[Record], list[str]]:
    found = class_folders(root)
    class_map = parse_class_map(classes or {}, root, found, "image_folder set")
    problems: list[str] = []
    notes: list[str] = []
    ignored: dict[str, int] = {}
    hidden: list[Path] = []
    images: list[tuple[Path, str]] = []
    for folder in class_map:
        found_here = walk(root / folder, notes)
        problems += dangling_links(found_here)
        files = sorted((p for p in found_here if p.is_file()), key=natural_key)
        hidden += [p for p in files if p.name.startswith(".")]
        files = [p for p in files if not p.name.startswith(".")]
        for p in files:
            if p.suffix.lower() not in EXTENSIONS:
                ignored[p.suffix.lower() or p.name] = ignored.get(p.suffix.lower() or p.name, 0) + 1
        here = [p for p in files if p.suffix.lower() in EXTENSIONS]
        if not here:
            problems.append(f"{root / folder}: no images ({', '.join(EXTENSIONS)})")
        images += [(p, folder) for p in here]
    images = drop_copies(images, notes, problems)
    loaders = float_loaders([p for p, _ in images], {**DEFAULT_WINDOW, **dict(float_window or {})}, root, notes)
    records = []
    for p, folder in images:
        label, diagnosis = class_map[folder]
        patient = None
        if patient_level is not None:
            parts = p.relative_to(root / folder).parts[:-1]
            if patient_level >= len(parts):
                problems.append(f"{p}: no folder at patient_level={patient_level} below {folder}/ (it is {len(parts)} deep)")
                continue
            patient = f"{folder}/{parts[patient_level]}"
        records.append(Record(key=p.relative_to(root).as_posix(), path=p, label=label, diagnosis=diagnosis,
                              patient=patient, loader=loaders.get(p, partial(load_grey, p))))
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise SourceError(f"image_folder set at {root}:\n  {shown}")
    if ignored:
        notes.insert(0, f"image_folder set at {root}: not images, not read: " + ", ".join(f"{n} x {k}" for k, n in sorted(ignored.items())))
    if hidden:
        notes.append(f"image_folder set at {root}: {len(hidden)} hidden file(s) not read (e.g. {hidden[0].name})")
    return records, notes
