"""Readers of CT image sets beyond the training split: one list of :class:`Record` per set.

Every reader returns records in a stable order, each with a loader giving the image as a float32 grey
``H x W`` array in ``[0, 1]`` (a DICOM slice already windowed). What happens next (resize, lung field,
normalisation) is not the reader's business: the images go through the preprocessing stored with a
checkpoint (``covidnet.images.preprocess``), the same path as training. Readers check everything they can
*before* any image is decoded and raise :class:`~covidnet.images.sources.base.SourceError` with every problem found, so a bad set
never produces half a result.

Kinds (``read_source(kind, root, **options)``; the same names are the ``kind`` of ``conf/eval/*.yaml``):

- ``covid_ct``: one split of the official COVID-CT layout (:mod:`covidnet.images.sources.covid_ct`);
- ``image_folder``: ``<root>/<class folder>/**/<image>`` (:mod:`covidnet.images.sources.image_folder`);
- ``dicom``: ``<root>/<class folder>/<patient>/*.dcm`` CT series (:mod:`covidnet.images.sources.dicom`);
- ``semiseg``: COVID-SemiSeg style all-COVID slices, ``<root>/images/*`` (:mod:`covidnet.images.sources.semiseg`).

Labels follow the project's convention: COVID = 1 (positive), non-COVID = 0. ``diagnosis`` keeps the finer
class (e.g. ``COVID-19``, ``CAP``, ``normal``) so that COVID can be compared with each non-COVID class alone.
"""

from __future__ import annotations

from pathlib import Path

from covidnet.images.sources import covid_ct, dicom, image_folder, semiseg
from covidnet.images.sources.base import Record, SourceError

__all__ = ["read_source"]


def read_source(kind: str, root: str | Path, **options) -> tuple[list[Record], list[str]]:
    """Records of one set, and notes worth printing (e.g. a slice-order fallback). Options are the reader's."""
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
