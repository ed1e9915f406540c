"""What every reader of :mod:`covidnet.images.sources` shares: the :class:`Record` it returns, the :class:`SourceError`
it raises, and the checks of a class map (folder -> COVID / non-COVID) that the folder-based readers apply.

Kept apart from ``covidnet/images/sources/__init__.py`` so that the readers and the dispatch in ``read_source`` import
it from below, without the package importing its own readers and they importing the package back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covidnet.core.errors import UserError


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
