"""What a data module trains on, checked before any image is decoded: the share of COVID-CT's training split
(``data.fraction``) and the other sources (``data.sources``, split by patient, covidnet/data/multisource.py).

Apart from covidnet/data/datamodule.py so that the data module stays one screenful of Lightning hooks; it imports no
Lightning, and the data module imports it (never the other way round).
"""

from __future__ import annotations

from covidnet.images.covid_ct_layout import Sample
from covidnet.core.errors import EvalError
from covidnet.data.multisource import MAIN_SOURCE
from covidnet.data.multisource import OPTIONS as SOURCE_OPTIONS
from covidnet.core.options import Rule, number
from covidnet.images.sampling import draw_per_class
from covidnet.data.sets import set_config
from covidnet.images.sources.base import SourceError

OPTIONS: dict[str, Rule] = {
    "data.fraction": number(0, 1, lo_open=True).because("the share of the training split kept"),
}


def check_sources(sources: list[str], test_sources: list[str] | None, fold: int, n_folds: int, source_defs: dict | None,
                  sets_root: str | None) -> None:
    """Refuse, before COVID-CT is decoded, a fold out of range and a source that cannot be split by patient (a set
    without patients, or of one class): otherwise the error came only after the whole dataset was read."""
    others = [n for n in dict.fromkeys([*sources, *(test_sources or [])]) if n != MAIN_SOURCE]
    if not others:
        return
    SOURCE_OPTIONS["data.n_folds"].check("data.n_folds", n_folds, SourceError)
    if not 0 <= fold < n_folds:
        raise SourceError(f"data.fold={fold} must be in 0..{n_folds - 1} (data.n_folds={n_folds}).")
    for name in others:
        defs = (source_defs or {}).get(name)
        key = "data.sources" if name in sources else "data.test_sources"  # the setting that names it
        try:
            cfg = defs if defs is not None else set_config(name, sets_root)
        except EvalError as err:
            raise SourceError(f"{key}: {err}") from err
        kind, read = cfg.get("kind"), cfg.get("read") or {}
        why = {"semiseg": "its slices have no patients and are all COVID",
               "covid_ct": "it is COVID-CT itself (covid_ct, always trained on)"}.get(kind)
        if kind == "image_folder" and read.get("patient_level") is None:
            why = "its images have no patients (set read.patient_level to the folder level that names them)"
        if why:
            raise SourceError(f"{key}: {name} ({kind}) cannot be split by patient for training: {why}. "
                              "Evaluate on it instead (eval_sets=[...] or evaluate.py).")


def check_fraction(fraction: float) -> float:
    return OPTIONS["data.fraction"].check("data.fraction", fraction)


def stratified_subset(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """A seeded fraction of each class (at least one image per class), in the original order."""
    if check_fraction(fraction) == 1:
        return list(samples)
    labels = [s.label for s in samples]
    drawn = draw_per_class(labels, lambda size: max(1, round(fraction * size)), seed, classes=sorted(set(labels)))
    keep = {i for idx in drawn.values() for i in idx}
    return [s for i, s in enumerate(samples) if i in keep]
