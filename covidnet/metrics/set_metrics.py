"""The statistics of a scored image set: per slice, per infected slice and per patient, with 95 % intervals.

One computation for every place a set is scored: ``evaluate.py`` (an eval set, covidnet.data.sets) and training's
per-source test metrics (covidnet.data.multisource.source_metrics), so the two report a set the same way. It takes
the records and their P(COVID), not a set object: training's sources are scored without being eval sets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from covidnet.metrics import metric_registry as registry
from covidnet.metrics import stats
from covidnet.core.errors import EvalError
from covidnet.images.sources.base import Record


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def _interval(iv: stats.Interval) -> dict:
    """An interval as metrics.json holds it; where there is none for too few units, ``low``/``high`` null and ``note`` why."""
    out = {"estimate": _num(iv.estimate), "low": _num(iv.low), "high": _num(iv.high), "n_boot": iv.n_boot, "n_undefined": iv.n_undefined}
    return out | ({"note": iv.note} if iv.note else {})


def undefined_metrics(labels: np.ndarray) -> set[str]:
    """Metrics without meaning on this subset (their ``needs_classes`` in the registry): with no non-COVID image, AUROC,
    specificity and precision; with no COVID image, AUROC, sensitivity, F1 and precision."""
    present = set(np.unique(labels).tolist())
    return {m for m in registry.keys() if not registry.defined(m, present)}


def block(labels: np.ndarray, probs: np.ndarray, groups: list | None, n_boot: int, seed: int) -> dict:
    """Metrics with 95 % intervals on one subset; ``groups`` (patient per image) makes the bootstrap resample patients."""
    ivs = stats.bootstrap_metrics(labels, probs, n_boot, seed, groups=groups)
    skip = undefined_metrics(labels)
    return {
        "n": int(labels.size),
        "n_covid": int((labels == 1).sum()),
        "n_patients": len(set(groups)) if groups is not None else None,
        "resampled": "patients (stratified by label)" if groups is not None else "images",
        "intervals": stats.too_few_units(labels, groups) or "95 % percentile bootstrap",
        "metrics": {m: (None if m in skip else _interval(iv)) for m, iv in ivs.items()},
        "mean_prob_covid": _interval(stats.bootstrap_mean(probs, n_boot, seed, groups=groups)),
    }


def comparisons(records: list[Record]) -> dict[str, np.ndarray]:
    """Subsets: ``all``, and ``COVID vs <d>`` for each non-COVID diagnosis where there are several."""
    labels = np.asarray([r.label for r in records])
    subsets = {"all": np.arange(len(records))}
    negatives = sorted({r.diagnosis for r in records if r.label == 0})
    if (labels == 1).any() and len(negatives) > 1:
        for d in negatives:
            subsets[f"COVID vs {d}"] = np.flatnonzero([r.label == 1 or r.diagnosis == d for r in records])
    return subsets


def patient_scores(records: list[Record], probs: np.ndarray, topk: int) -> tuple[list[str], np.ndarray, dict[str, np.ndarray], list[str]]:
    """Per patient (in order of first appearance): id, label, {mean, top-k mean of P(COVID)}, diagnosis."""
    order: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        order.setdefault(r.patient, []).append(i)
    ids = list(order)
    labels = np.asarray([records[v[0]].label for v in order.values()])
    diagnosis = [records[v[0]].diagnosis for v in order.values()]
    mean = np.asarray([probs[v].mean() for v in order.values()])
    top = np.asarray([np.sort(probs[v])[::-1][: min(topk, len(v))].mean() for v in order.values()])
    return ids, labels, {"mean": mean, f"top{topk}_mean": top}, diagnosis


def set_metrics(records: list[Record], probs: np.ndarray, n_boot: int, seed: int, *, name: str, kind: str, root: str | Path,
                notes: Iterable[str] = (), topk: int = 5) -> dict:
    """metrics.json of a scored set ``name`` (its ``kind`` and ``root`` recorded as given): slices (patients
    resampled where every image has one), per patient (mean and top-``topk`` mean P(COVID)), and infected slices
    where slice labels are published."""
    labels = np.asarray([r.label for r in records])
    has_patients = all(r.patient is not None for r in records)
    groups = [r.patient for r in records] if has_patients else None
    for p in set(groups or []):
        if len({r.label for r in records if r.patient == p}) > 1:
            raise EvalError(f"eval set {name}: patient {p} has images of both labels; a patient has one label.")
    out: dict = {
        "set": name,
        "kind": kind,
        "root": str(root),
        "n_images": len(records),
        "n_covid": int(labels.sum()),
        "diagnoses": {d: sum(r.diagnosis == d for r in records) for d in sorted({r.diagnosis for r in records})},
        "n_patients": len(set(groups)) if groups else None,
        "threshold": registry.THRESHOLD,
        "notes": list(notes),
        "images": {},
    }
    for subset, idx in comparisons(records).items():
        g = [groups[i] for i in idx] if groups else None
        out["images"][subset] = block(labels[idx], probs[idx], g, n_boot, seed)
    if has_patients:
        ids, plabels, scores, pdiag = patient_scores(records, probs, topk)
        prec = [Record(key=i, path=Path(i), label=int(lab), diagnosis=d, patient=i) for i, lab, d in zip(ids, plabels, pdiag)]
        out["patients"] = {}
        for agg, values in scores.items():
            out["patients"][agg] = {}
            for subset, idx in comparisons(prec).items():
                out["patients"][agg][subset] = block(plabels[idx], values[idx], [ids[i] for i in idx], n_boot, seed)
        out["patient_probs"] = {i: {a: _num(v[k]) for a, v in scores.items()} | {"label": int(plabels[k]), "diagnosis": pdiag[k]} for k, i in enumerate(ids)}
    if any(r.slice_label is not None for r in records):
        # infected COVID slices vs every non-COVID slice; COVID slices without a finding (or a label) left out
        idx = np.flatnonzero([(r.label == 1 and r.slice_label == 1) or r.label == 0 for r in records])
        g = [groups[i] for i in idx] if groups else None
        out["infected_slices"] = block(labels[idx], probs[idx], g, n_boot, seed)
        out["infected_slices"]["what"] = "COVID slices with a published infection label vs all non-COVID slices"
    return out


def summary_rows(model: str, metrics: dict) -> list[dict]:
    """The rows of evaluate.py's summary.csv for one model's :func:`set_metrics`: one per level and subset."""
    rows = []
    levels = [("slices", metrics["images"])]
    levels += [(f"patients ({agg})", b) for agg, b in metrics.get("patients", {}).items()]
    if "infected_slices" in metrics:
        levels.append(("infected slices", {"all": metrics["infected_slices"]}))
    for level, blocks in levels:
        for subset, b in blocks.items():
            row = {"model": model, "set": metrics["set"], "level": level, "subset": subset, "n": b["n"], "n_covid": b["n_covid"]}
            for m in registry.shown_in("sets"):
                iv = b["metrics"].get(m)
                row[m] = iv["estimate"] if iv else None
                row[f"{m}_low"], row[f"{m}_high"] = (iv["low"], iv["high"]) if iv else (None, None)
            row["mean_prob_covid"] = b["mean_prob_covid"]["estimate"]
            rows.append(row)
    return rows
