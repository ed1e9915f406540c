"""Readers of CT image sets beyond the training split: one list of :class:`Record` per set.

Every reader returns records in a stable order, each with a loader giving the image as a float32 grey
``H x W`` array in ``[0, 1]`` (a DICOM slice already windowed). What happens next (resize, lung field,
normalisation) is not the reader's business: the images go through the preprocessing stored with a
checkpoint (``covidnet.preprocess``), the same path as training. Readers check everything they can
*before* any image is decoded and raise :class:`SourceError` with every problem found, so a bad set
never produces half a result.

Kinds (``read_source(kind, root, **options)``; the same names are the ``kind`` of ``conf/eval/*.yaml``):

- ``covid_ct``: one split of the official COVID-CT layout (:mod:`covidnet.sources.covid_ct`);
- ``image_folder``: ``<root>/<class folder>/**/<image>`` (:mod:`covidnet.sources.image_folder`);
- ``dicom``: ``<root>/<class folder>/<patient>/*.dcm`` CT series (:mod:`covidnet.sources.dicom`);
- ``semiseg``: COVID-SemiSeg style all-COVID slices, ``<root>/images/*`` (:mod:`covidnet.sources.semiseg`).

Labels follow the project's convention: COVID = 1 (positive), non-COVID = 0. ``diagnosis`` keeps the finer
class (e.g. ``COVID-19``, ``CAP``, ``normal``) so that COVID can be compared with each non-COVID class alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covidnet.errors import UserError


class SourceError(UserError, ValueError):
    """An image set on disk cannot be read as configured; the message names the files and the fix."""


@dataclass(frozen=True)
class Record:
    """One image of a set.

    ``key`` is unique within the set and stable across machines (the path relative to the set's root);
    ``patient`` is ``None`` where the set does not say which images belong together; ``position`` is the
    slice's index in its patient's ordered series (DICOM) or ``None``; ``slice_label`` is an optional
    per-slice finding (1 = infection visible on this slice) where the set provides one.
    """

    key: str
    path: Path
    label: int
    diagnosis: str
    patient: str | None = None
    position: int | None = None
    slice_label: int | None = None
    loader: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)

    def load(self) -> np.ndarray:
        """The image as float32 grey ``H x W`` in ``[0, 1]``."""
        if self.loader is None:
            raise SourceError(f"{self.key}: no loader")
        return self.loader()


def read_source(kind: str, root: str | Path, **options) -> tuple[list[Record], list[str]]:
    """Records of one set, and notes worth printing (e.g. a slice-order fallback). Options are the reader's."""
    from covidnet.sources import covid_ct, dicom, image_folder, semiseg

    readers = {"covid_ct": covid_ct.read, "image_folder": image_folder.read, "dicom": dicom.read, "semiseg": semiseg.read}
    if kind not in readers:
        raise SourceError(f"Unknown set kind {kind!r}; choose one of {', '.join(readers)}.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SourceError(f"{kind} set not found: {root} is not a directory. Pass the set's root (e.g. root=../shared/data/...).")
    try:
        records, notes = readers[kind](root, **options)
    except TypeError as err:  # an option the reader does not take
        raise SourceError(f"{kind} set: {err}") from err
    if not records:
        raise SourceError(f"{kind} set at {root}: no images found (nothing to evaluate). Check root and the class map.")
    keys = [r.key for r in records]
    if len(set(keys)) != len(keys):
        raise SourceError(f"{kind} set at {root}: duplicate keys {sorted({k for k in keys if keys.count(k) > 1})[:5]}")
    return records, notes


def parse_class_map(classes: dict, root: Path, found: list[str], what: str) -> dict[str, tuple[int, str]]:
    """``{folder: label}`` or ``{folder: {label: 0|1, diagnosis: name}}`` -> ``{folder: (label, diagnosis)}``.

    A folder mapped to ``null`` is skipped on purpose; a folder that is present but not named is an error
    (listing every folder found), and so is a named folder that is missing: nothing is dropped silently.
    """
    if not classes:
        raise SourceError(f"{what} at {root}: no class map given; found folders: {', '.join(found) or 'none'}. "
                          "Pass classes={<folder>: 1 (COVID) | 0 (non-COVID) | null (skip)}.")
    parsed: dict[str, tuple[int, str]] = {}
    problems = []
    for folder, value in dict(classes).items():
        if value is None:
            continue
        if isinstance(value, dict) or hasattr(value, "keys"):
            label, diagnosis = value.get("label"), value.get("diagnosis", folder)
        else:
            label, diagnosis = value, folder
        if label not in (0, 1) or isinstance(label, bool):
            problems.append(f"classes.{folder}: label {label!r} must be 1 (COVID) or 0 (non-COVID)")
            continue
        parsed[str(folder)] = (int(label), str(diagnosis))
    unnamed = [f for f in found if f not in dict(classes)]
    missing = [f for f in parsed if f not in found]
    if unnamed:
        problems.append(f"class folder(s) the class map does not name: {', '.join(unnamed)} "
                        "(add each to classes with 1, 0, or null to skip it)")
    if missing:
        problems.append(f"class folder(s) in the map but not on disk: {', '.join(missing)}")
    if problems:
        raise SourceError(f"{what} at {root}: " + "; ".join(problems) + f". Found folders: {', '.join(found) or 'none'}.")
    if not any(lab == 1 for lab, _ in parsed.values()) and not any(lab == 0 for lab, _ in parsed.values()):
        raise SourceError(f"{what} at {root}: the class map keeps no folder.")
    return parsed


def class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def dangling_links(paths) -> list[str]:
    """One problem per symbolic link whose target is missing: a file that looks present but cannot be read
    (``Path.is_file`` is False for it, so a plain listing would drop it without a word)."""
    return [f"{p}: a symbolic link to a missing file ({os.readlink(p)}); restore its target or remove the link"
            for p in paths if p.is_symlink() and not p.exists()]
