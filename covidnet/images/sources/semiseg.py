"""``semiseg``: COVID-SemiSeg style slices, every one COVID-positive: ``<root>/images/<N>.jpg|png``.

With one class only, AUROC and specificity are undefined; what it measures is sensitivity (share called
COVID at P > 0.5) and mean P(COVID). The release does not say which slices come from the same patient,
so each slice is its own unit in the intervals (they are probably narrower than they should be).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from covidnet.images.covid_ct_layout import load_grey
from covidnet.images.sources.base import Record, SourceError, dangling_links
from covidnet.images.sources.image_folder import EXTENSIONS, natural_key


def read(root: Path, images: str = "images") -> tuple[list[Record], list[str]]:
    folder = root / images
    if not folder.is_dir():
        raise SourceError(f"semiseg set at {root}: no {images}/ folder (expected {folder}/<N>.jpg).")
    entries = list(folder.iterdir())
    problems = dangling_links(entries)
    if problems:
        raise SourceError(f"semiseg set at {root}:\n  " + "\n  ".join(problems[:10]))
    paths = sorted((p for p in entries if p.suffix.lower() in EXTENSIONS and p.is_file()), key=natural_key)
    records = [Record(key=p.relative_to(root).as_posix(), path=p, label=1, diagnosis="COVID", loader=partial(load_grey, p))
               for p in paths]
    others = sorted(p.name for p in entries if p not in paths and not p.name.startswith("."))
    notes = [f"semiseg set at {root}: {len(others)} entries of {images}/ are not images and not read: {', '.join(others[:5])}"] if others else []
    return records, notes
