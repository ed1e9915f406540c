"""Training on several sources: COVID-CT's official split plus image sets read by :mod:`covidnet.images.sources`.

COVID-CT's label is tied to its source (COVID images from COVID papers, non-COVID ones mostly from other
collections), so a network trained on it alone can separate the classes by source. A second source in which
positives and negatives come from the same hospital breaks that link. Such a source is small (covid-ct-md-sample:
two patients per diagnosis), so it is split **by patient, never by slice**, into folds: with two folds, fold 0
tests the first patient of each diagnosis (in name order) and trains on the second, fold 1 the other way round, so that
every patient is tested once by a model that never saw it (``-m data.fold=0,1``).

A source other than ``covid_ct`` is named like an evaluation set, ``conf/eval/<name>.yaml`` (one reader
configuration for evaluating on a set and for training on it). Slice labels of a training source with
patients (``data.slice_labels``):

- ``infected_only`` (default): slices of non-COVID patients are 0; slices of COVID patients with a published
  infection finding are 1; COVID slices without one are left out of training. An uninfected slice of a COVID
  patient shows no sign of the disease: calling it 1 teaches the network to recognise the patient (or the
  scanner) rather than the disease, calling it 0 contradicts its patient's diagnosis.
- ``patient``: every slice gets its patient's label (needs no slice findings; noisier labels).
- ``uninfected_negative``: COVID slices without a finding are 0 (what the slice shows, not who it belongs to).

Test images of such a source always keep their patient's label; evaluation reports per slice, per infected
slice and per patient (:func:`covidnet.metrics.set_metrics.set_metrics`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from covidnet.metrics import set_metrics as set_stats
from covidnet.core.options import Rule, integer, names, one_of, optional
from covidnet.images.sources.base import Record, SourceError

MAIN_SOURCE = "covid_ct"
SLICE_POLICIES = ("infected_only", "patient", "uninfected_negative")
BALANCE_MODES = ("none", "source_class")

# conf/data keys of training on several sources (covidnet.core.options); the functions below check with these rules
OPTIONS: dict[str, Rule] = {
    "data.sources": Rule(f"a non-empty list of source names that includes {MAIN_SOURCE}",
                         lambda v: names(v) is not None and MAIN_SOURCE in names(v)
                         ).because("COVID-CT is always trained on: its validation split selects the model"),
    "data.test_sources": optional(Rule("a non-empty list of source names", lambda v: bool(names(v)))),
    "data.fold": integer(0).because("the patient fold tested (0 .. data.n_folds - 1)"),
    "data.n_folds": integer(2).because("one fold of each source's patients tested, the rest trained on"),
    "data.slice_labels": one_of(SLICE_POLICIES),
    "data.balance": one_of(BALANCE_MODES),
}


@dataclass(frozen=True)
class SourceItem:
    """One image of a split, where it came from and how it is labelled for training or evaluation."""

    source: str
    key: str
    label: int
    patient: str | None = None
    diagnosis: str | None = None
    slice_label: int | None = None

    @property
    def name(self) -> str:
        """File name in predictions: COVID-CT's own names unchanged, other sources prefixed by their name."""
        return self.key if self.source == MAIN_SOURCE else f"{self.source}/{self.key}"


def patient_folds(records: list[Record], n_folds: int, where: str) -> dict[str, int]:
    """Fold of each patient: the patients of each diagnosis in name order, dealt out round-robin.

    Every diagnosis needs at least ``n_folds`` patients, so that each fold tests every diagnosis.
    """
    OPTIONS["data.n_folds"].check(f"{where}: data.n_folds", n_folds, SourceError)
    missing = [r.key for r in records if r.patient is None]
    if missing:
        raise SourceError(f"{where}: {len(missing)} image(s) have no patient (e.g. {missing[0]}); a training source is split by patient.")
    by_diagnosis: dict[str, set[str]] = defaultdict(set)
    for r in records:
        by_diagnosis[r.diagnosis].add(r.patient)
    short = {d: len(p) for d, p in by_diagnosis.items() if len(p) < n_folds}
    if short:
        raise SourceError(f"{where}: data.n_folds={n_folds}, but diagnoses {short} have fewer patients than folds; lower data.n_folds.")
    fold: dict[str, int] = {}
    for diagnosis in sorted(by_diagnosis):
        for i, patient in enumerate(sorted(by_diagnosis[diagnosis])):
            fold[patient] = i % n_folds
    return fold


def split_by_patient(records: list[Record], fold: int, n_folds: int, where: str) -> dict[str, list[Record]]:
    """``{"train": records of the other folds' patients, "test": records of fold ``fold``'s patients}``."""
    if not 0 <= fold < n_folds:
        raise SourceError(f"{where}: data.fold={fold} must be in 0..{n_folds - 1} (data.n_folds={n_folds}).")
    of = patient_folds(records, n_folds, where)
    return {
        "train": [r for r in records if of[r.patient] != fold],
        "test": [r for r in records if of[r.patient] == fold],
    }


def training_label(r: Record, policy: str) -> int | None:
    """The label a training slice gets under ``policy``; ``None`` leaves it out."""
    if r.label == 0 or policy == "patient":
        return r.label
    if r.slice_label is None:
        raise SourceError(
            f"{r.key}: data.slice_labels={policy} needs a slice-level finding for every COVID slice, and this one has none; "
            "configure the set's slice labels (read.slice_labels) or use data.slice_labels=patient."
        )
    if r.slice_label == 1:
        return 1
    return None if policy == "infected_only" else 0


def source_items(source: str, records: list[Record], split: str, policy: str) -> list[tuple[SourceItem, Record]]:
    """Items of one split of a source: training slices labelled by ``policy``, test slices by patient."""
    OPTIONS["data.slice_labels"].check("data.slice_labels", policy, SourceError)
    out = []
    for r in records:
        label = training_label(r, policy) if split == "train" else r.label
        if label is not None:
            out.append((SourceItem(source, r.key, int(label), r.patient, r.diagnosis, r.slice_label), r))
    return out


def sampling_weights(items: list[SourceItem], mode: str) -> np.ndarray | None:
    """Per-image sampling weights: ``source_class`` gives every (source, class) cell the same share of draws."""
    OPTIONS["data.balance"].check("data.balance", mode)
    if mode == "none":
        return None
    cells = [(it.source, it.label) for it in items]
    counts: dict[tuple[str, int], int] = defaultdict(int)
    for c in cells:
        counts[c] += 1
    w = np.asarray([1.0 / counts[c] for c in cells], dtype=np.float64)
    return w / w.sum()


def source_metrics(items: list[SourceItem], records: list, probs: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Test metrics of each source on its own, with 95 % intervals: COVID-CT per image; a source with patients
    per slice (patients resampled), per infected slice and per patient, as ``evaluate.py`` reports a set."""
    out: dict = {}
    for name in dict.fromkeys(it.source for it in items):
        idx = np.flatnonzero([it.source == name for it in items])
        labels = np.asarray([items[i].label for i in idx])
        if name == MAIN_SOURCE:
            out[name] = {"images": {"all": set_stats.block(labels, probs[idx], None, n_boot, seed)}}
            continue
        out[name] = set_stats.set_metrics([records[i] for i in idx], probs[idx], n_boot, seed, name=name, kind="training source",
                                          root=stats_root(records, idx))
    return out


def stats_root(records: list, idx) -> str:
    """The common folder of a source's files (only recorded, for the reader of metrics.json)."""
    import os

    paths = [str(records[i].path) for i in idx]
    return os.path.commonpath(paths) if paths else ""


def scalars(by_source: dict) -> dict[str, float]:
    """TensorBoard scalars of :func:`source_metrics`: ``test/<source>/<metric>`` per image (slice) and, for
    sources with patients, ``test/<source>/patient_<metric>`` (mean slice probability per patient)."""
    out: dict[str, float] = {}
    for source, m in by_source.items():
        levels = [("", m["images"]["all"])]
        if "patients" in m:
            levels.append(("patient_", m["patients"]["mean"]["all"]))
        for prefix, block in levels:
            for metric, iv in block["metrics"].items():
                if iv is not None and iv.get("estimate") is not None:
                    out[f"test/{source}/{prefix}{metric}"] = float(iv["estimate"])
    return out
