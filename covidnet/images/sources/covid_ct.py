"""``covid_ct``: one split of the official COVID-CT layout as one more set: the in-split test (``covid_ct_test``), or the
validation split (``covid_ct_val``) for validation-only numbers of trained models.

Reuses :mod:`covidnet.images.covid_ct_layout` (layout check, split lists, decoding). The official split is by patient
but does not name the patients, so records carry no patient id and intervals resample images.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from covidnet.images.covid_ct_layout import SPLITS, DatasetError, load_grey, read_split
from covidnet.images.sources.base import Record, SourceError

DIAGNOSIS = {1: "COVID", 0: "non-COVID"}


def read(root: Path, split: str = "test") -> tuple[list[Record], list[str]]:
    if split not in SPLITS:
        raise SourceError(f"covid_ct set: split={split!r}; choose one of {', '.join(SPLITS)}.")
    try:
        samples = read_split(root, split)
    except DatasetError as err:
        raise SourceError(str(err)) from err
    missing = [str(s.path) for s in samples if not s.path.is_file()]
    if missing:
        raise SourceError(f"covid_ct set at {root}: {len(missing)} listed image(s) missing, e.g. {missing[:3]}.")
    records = [
        Record(key=s.path.relative_to(root).as_posix(), path=s.path, label=s.label, diagnosis=DIAGNOSIS[s.label],
               loader=partial(load_grey, s.path))
        for s in samples
    ]
    return records, []
