"""``image_folder``: ``<root>/<class folder>/**/<image>`` with a map from class folder to COVID = 1 / non-COVID = 0.

Images: png, jpg/jpeg, tif/tiff, bmp, any mode (RGB, RGBA composited on black, palette, L, 16-bit), decoded by
:func:`covidnet.covid_ct_layout.load_grey` like the training images. 16-bit images are scaled by the bit depth their
values use (8, 10, 12 or 16 bits), not windowed: a slice stored in Hounsfield units belongs in a DICOM set.
Other files under a class folder (e.g. ``.txt``, ``.csv``) are counted and named in a note, never read.

Patients: ``patient_level=k`` takes the patient id from the k-th folder below the class folder
(``<root>/COVID/<patient>/<file>`` is ``patient_level=0``); without it, each image is its own unit.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from covidnet.covid_ct_layout import load_grey
from covidnet.sources.base import Record, SourceError, class_folders, dangling_links, parse_class_map

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def natural_key(path: Path) -> list:
    """``2.jpg`` before ``10.jpg``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.as_posix())]


def read(root: Path, classes: dict | None = None, patient_level: int | None = None) -> tuple[list[Record], list[str]]:
    found = class_folders(root)
    class_map = parse_class_map(classes or {}, root, found, "image_folder set")
    records: list[Record] = []
    problems: list[str] = []
    ignored: dict[str, int] = {}
    for folder, (label, diagnosis) in class_map.items():
        found_here = list((root / folder).rglob("*"))
        problems += dangling_links(found_here)
        files = sorted((p for p in found_here if p.is_file() and not p.name.startswith(".")), key=natural_key)
        images = [p for p in files if p.suffix.lower() in EXTENSIONS]
        for p in files:
            if p.suffix.lower() not in EXTENSIONS:
                ignored[p.suffix.lower() or p.name] = ignored.get(p.suffix.lower() or p.name, 0) + 1
        if not images:
            problems.append(f"{root / folder}: no images ({', '.join(EXTENSIONS)})")
        for p in images:
            patient = None
            if patient_level is not None:
                parts = p.relative_to(root / folder).parts[:-1]
                if patient_level >= len(parts):
                    problems.append(f"{p}: no folder at patient_level={patient_level} below {folder}/ (it is {len(parts)} deep)")
                    continue
                patient = f"{folder}/{parts[patient_level]}"
            records.append(Record(key=p.relative_to(root).as_posix(), path=p, label=label, diagnosis=diagnosis,
                                  patient=patient, loader=partial(load_grey, p)))
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise SourceError(f"image_folder set at {root}:\n  {shown}")
    notes = [f"image_folder set at {root}: not images, not read: " + ", ".join(f"{n} x {k}" for k, n in sorted(ignored.items()))] if ignored else []
    return records, notes
