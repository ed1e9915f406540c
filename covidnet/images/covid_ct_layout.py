"""The COVID-CT dataset in its official layout: split lists, labels, image decoding, checks.

Layout (UCSD-AI4H/COVID-CT after unzipping the two image archives)::

    root/Images-processed/CT_COVID/*.png|jpg
    root/Images-processed/CT_NonCOVID/*.png|jpg
    root/Data-split/COVID/{train,val,test}CT_COVID.txt
    root/Data-split/NonCOVID/{train,val,test}CT_NonCOVID.txt
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from covidnet.core.errors import UserError

SPLITS = ("train", "val", "test")
COVID, NON_COVID = 1, 0
CLASS_NAMES = {COVID: "COVID", NON_COVID: "non-COVID"}
# (label, image folder, split-file folder, split-file suffix)
CLASSES = (
    (COVID, "Images-processed/CT_COVID", "Data-split/COVID", "CT_COVID.txt"),
    (NON_COVID, "Images-processed/CT_NonCOVID", "Data-split/NonCOVID", "CT_NonCOVID.txt"),
)
# Decoding more than this many pixels is refused: larger files are almost certainly not CT slices.
MAX_PIXELS = 64_000_000
# ...and so is anything narrower than this (the smallest official COVID-CT image is 148x61).
MIN_SIDE = 16
T = TypeVar("T")


class DatasetError(UserError, ValueError):
    """The dataset on disk is missing, incomplete or inconsistent; the message says what and how to fix it."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int

    @property
    def name(self) -> str:
        return self.path.name


def split_file(root: Path, label: int, split: str) -> Path:
    for lab, _, split_dir, suffix in CLASSES:
        if lab == label:
            return Path(root) / split_dir / f"{split}{suffix}"
    raise KeyError(label)


def image_dir(root: Path, label: int) -> Path:
    return Path(root) / next(folder for lab, folder, _, _ in CLASSES if lab == label)


def expected_files(root: Path) -> list[Path]:
    """Every path the official layout must contain (image folders and split files)."""
    paths = [image_dir(root, lab) for lab, *_ in CLASSES]
    paths += [split_file(root, lab, s) for lab, *_ in CLASSES for s in SPLITS]
    return paths


def is_complete_layout(root: Path) -> bool:
    return all(p.exists() for p in expected_files(root))


def read_names(path: Path) -> list[str]:
    """File names listed in a split file (one per line; blank lines ignored). ``utf-8-sig``: a byte-order mark
    that an editor put at the start is not part of the first name."""
    return [name for _, name in numbered_names(path)]


def escaped(path: Path | str) -> str:
    """A path as it should appear in a message: with invisible or odd characters escaped (``'a\\u200b.png'``),
    so a name that looks right but is not can be seen to differ."""
    text = str(path)
    return text if text.isprintable() and text == text.strip() else ascii(text)


def read_split(root: Path | str, split: str) -> list[Sample]:
    """Samples of one split, COVID first then non-COVID, in split-file order."""
    if split not in SPLITS:
        raise DatasetError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    root = Path(root)
    check_layout(root)
    return listed_samples(root, split)


def check_layout(root: Path) -> None:
    """Raise the layout message (what is missing, what the layout is) unless every folder and split file exists."""
    missing = [p for p in expected_files(root) if not p.exists()]
    if missing:
        raise DatasetError(layout_message(root, missing))


def listed_samples(root: Path, split: str) -> list[Sample]:
    """What a split's files list, COVID first (the layout already checked). A name that leads out of its class's
    image folder is refused, with its file and line: a split list must not make a test set of arbitrary files."""
    samples, outside = [], []
    for lab, *_ in CLASSES:
        listing = split_file(root, lab, split)
        for number, name in numbered_names(listing):
            if leaves_folder(name):
                outside.append(f"{listing}, line {number}: {escaped(name)}")
            else:
                samples.append(Sample(image_dir(root, lab) / name, lab))
    if outside:
        raise DatasetError(
            f"{len(outside)} name(s) in the split lists lead outside the image folders ({', '.join(f for _, f, _, _ in CLASSES)}):\n  "
            + "\n  ".join(outside) + "\nA split list names image files of its class folder (e.g. 2020.01.24.919183-p27-132.png); "
            "remove absolute paths and '..' from those lines."
        )
    return samples


def numbered_names(path: Path) -> list[tuple[int, str]]:
    """(line number, name) of each non-blank line of a split file: what :func:`read_names` reads, with the line an
    error can point at."""
    text = Path(path).read_text(encoding="utf-8-sig", errors="replace")
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def leaves_folder(name: str) -> bool:
    """Whether a listed name is absolute or climbs out of its folder with '..' (either separator): such a name
    would be read from anywhere on the disk and scored as a COVID-CT image."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or Path(name).is_absolute() or ".." in parts or (len(name) > 1 and name[1] == ":")


def layout_message(root: Path, missing: list[Path]) -> str:
    shown = "\n  ".join(str(p) for p in missing[:8])
    more = f"\n  ... and {len(missing) - 8} more" if len(missing) > 8 else ""
    return (
        f"COVID-CT data not found at {root} (the official layout is incomplete). Missing:\n  {shown}{more}\n"
        "Fix: pass data.root=/path/to/covid-ct (a folder holding Images-processed/ and Data-split/), "
        "set COVIDNET_DATA, or fetch it from the official repository with data.download=true (the default of train.py) "
        "into a data.root that does not exist yet or is empty."
    )


def load_grey(path: Path | str) -> np.ndarray:
    """Decode any image mode (RGB, RGBA, L, 16-bit I;16, palette) to a float32 grey array in [0, 1].

    RGBA is composited on black: the transparent parts of figure crops carry no CT signal.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise DatasetError(f"{path}: {im.width}x{im.height} pixels is larger than any CT slice; remove it from the split.")
            if min(im.width, im.height) < MIN_SIDE:
                raise DatasetError(
                    f"{path}: {im.width}x{im.height} pixels is too small to be a CT slice (under {MIN_SIDE} px on a side); "
                    "replace it with the full image or remove it from its split file."
                )
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                # the bit depth the values use (8, 10, 12 or 16): 12-bit CT stored in a 16-bit PNG is not darkened
                top = next((float(t) for t in (255, 1023, 4095, 65535) if arr.max() <= t), float(arr.max()))
                return np.clip(arr / top, 0.0, 1.0)
            if im.mode == "F":
                return float_grey(path, np.asarray(im, dtype=np.float32))
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                black = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(black, im)
            grey = im.convert("L")
            return np.asarray(grey, dtype=np.float32) / 255.0
    except DatasetError:
        raise
    except Image.DecompressionBombError as err:  # PIL refuses > 2 x Image.MAX_IMAGE_PIXELS before we can look
        raise DatasetError(f"{path}: larger than any CT slice ({err}); remove it from the split.") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"{path}: cannot be decoded as an image ({err}). Replace the file or remove it from its split file.") from err


def float_grey(path: Path, arr: np.ndarray) -> np.ndarray:
    """A floating-point image whose values are grey levels in [0, 1], as it is. Other values (Hounsfield units, most
    often) are refused rather than stretched to their own minimum and maximum, which would give every image a window
    of its own without a word."""
    if np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0:
        return arr
    raise DatasetError(
        f"{path}: floating-point pixel values from {np.nanmin(arr):g} to {np.nanmax(arr):g}, not grey levels in [0, 1] (Hounsfield "
        "units?). Evaluate such images as an image_folder set, which reads them through a stated window, or save them as 8/16-bit images."
    )


def check_dataset(root: Path | str, load: Callable[[Path], T] | None = None, workers: int = 4) -> tuple[dict[str, list[Sample]], dict[Path, T]]:
    """Check the whole dataset, reporting every problem at once, and decode each image once.

    Checks: layout present, no empty split, every listed file exists, no image in two splits,
    and every image decodes (``load`` is applied to each existing image, in threads; its
    results are returned so that nothing is decoded twice).
    """
    root = Path(root)
    check_layout(root)
    splits = {s: listed_samples(root, s) for s in SPLITS}
    problems: list[str] = []
    seen: dict[Path, str] = {}
    for split, samples in splits.items():
        for lab, *_ in CLASSES:
            if not any(s.label == lab for s in samples):
                problems.append(f"empty split: {split_file(root, lab, split)} lists no image")
        for s in samples:
            if s.path in seen:
                where = f"in both the {seen[s.path]} and {split} splits" if seen[s.path] != split else f"twice in the {split} split"
                problems.append(f"{escaped(s.path.name)} is listed {where}")
            seen.setdefault(s.path, split)
            if not s.path.is_file():
                problems.append(f"missing image: {escaped(s.path)} (listed in {split_file(root, s.label, split).name})")
    loaded: dict[Path, T] = {}
    if load is not None:
        paths = [p for p in seen if p.is_file()]

        def attempt(path: Path):
            try:
                return path, load(path), None
            except DatasetError as err:
                return path, None, str(err)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for path, value, error in pool.map(attempt, paths):
                if error:
                    problems.append(error)
                else:
                    loaded[path] = value
    if problems:
        listing = "\n  ".join(problems)
        raise DatasetError(
            f"The dataset at {root} has {len(problems)} problem(s):\n  {listing}\n"
            "Fix the files or split lists named above (or re-download with data.download=true into an empty data.root)."
        )
    return splits, loaded
