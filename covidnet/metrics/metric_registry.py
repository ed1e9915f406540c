"""The binary metrics, one record each: how it is computed, which way is better, what tables call it, how training logs it.

Why one registry: the statistics (covidnet.metrics.stats: point values and bootstrap intervals), training's logging
(covidnet.models.model: ``train/<key>``, ``val/<key>``, ``test/<key>``) and every report table (the sweep report, a scored
set's summary.csv, the external-set and per-source tables, the seed ensembles) read their metrics from here, so a
metric is added in one place: :func:`register` a :class:`Metric` and every one of them shows it.

Conventions every metric follows (those of torchmetrics, which training logs with): COVID (label 1) is positive, a
prediction is positive when P(COVID) > ``THRESHOLD``, a ratio with an empty denominator is 0, and AUROC counts ties
as half (Mann-Whitney). A metric is computed along the last axis, so one call scores every bootstrap resample.

Order: the sweep report's summary and runs tables, summary.csv, runs.csv, metrics.json and training show every
metric in registration order. The set-level tables (:data:`TABLES`) show the metrics that name them, ordered by
``rank`` (the headline first); a metric without a rank comes after the ranked ones, in registration order.

This module imports no torch: the report reads it without loading the models. ``logged_as`` names the
torchmetrics class instead of holding it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

THRESHOLD = 0.5

# the set-level tables a metric may appear in (the sweep's summary and runs tables show every metric):
TABLES = (
    "comparison",  # the sweep report's paired differences with their verdicts (covidnet.report.scoring)
    "sets",  # a scored set's summary.csv rows (covidnet.metrics.set_metrics)
    "external",  # the external-set table of a sweep, mean ± std over seeds (covidnet.trained.external_summary)
    "external_differences",  # the paired differences below that table
    "sources",  # each test source on its own (covidnet.report.sources)
    "ensemble",  # seed ensembles (covidnet.report.ensemble)
)


@dataclass(frozen=True)
class Metric:
    """One binary metric of labels and P(COVID)."""

    key: str  # metrics.json / csv key and the logged name (val/<key>): a Python identifier
    compute: Callable[[np.ndarray, np.ndarray, float], np.ndarray]  # (labels, P(COVID), threshold) -> values, last axis
    header: str  # its column in the sweep report's summary and runs tables
    words: str  # its name in sentences and difference columns
    higher_is_better: bool = True  # which way a difference is "better" (covidnet.metrics.arm_stats.verdict)
    needs_threshold: bool = True  # computed from the COVID calls at THRESHOLD (AUROC is not)
    needs_classes: frozenset[int] = frozenset()  # the labels a set must hold for the metric to mean anything
    logged_as: str | None = None  # torchmetrics.classification class training logs it with; None: not logged
    tables: frozenset[str] = frozenset(TABLES)  # the set-level tables that show it
    rank: int | None = None  # position in those tables (module docstring)


_REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add ``metric`` to every consumer (module docstring); its key must be new."""
    if not metric.key.isidentifier():
        raise ValueError(f"metric key {metric.key!r}: use a Python identifier (it names csv columns such as {metric.key}_low).")
    if metric.key in _REGISTRY:
        raise ValueError(f"metric {metric.key!r} is registered already; pick another key or unregister it first.")
    unknown = sorted(set(metric.tables) - set(TABLES))
    if unknown:
        raise ValueError(f"metric {metric.key!r}: unknown tables {unknown}; tables are {', '.join(TABLES)}.")
    _REGISTRY[metric.key] = metric
    return metric


def unregister(key: str) -> None:
    get(key)
    del _REGISTRY[key]


@contextmanager
def registered(metric: Metric) -> Iterator[Metric]:
    """``metric`` registered inside the block only (a trial or a test)."""
    register(metric)
    try:
        yield metric
    finally:
        unregister(metric.key)


def get(key: str) -> Metric:
    try:
        return _REGISTRY[key]
    except KeyError:
        raise KeyError(f"unknown metric {key!r}; registered: {', '.join(_REGISTRY)}") from None


def keys() -> tuple[str, ...]:
    """Every metric, in registration order."""
    return tuple(_REGISTRY)


def shown_in(table: str) -> tuple[str, ...]:
    """The metrics ``table`` (one of :data:`TABLES`) shows, in its order."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; tables are {', '.join(TABLES)}.")
    found = [m for m in _REGISTRY.values() if table in m.tables]
    ranked = sorted((m for m in found if m.rank is not None), key=lambda m: m.rank)
    return tuple(m.key for m in ranked + [m for m in found if m.rank is None])


def words(key: str) -> str:
    """A metric's name in sentences; anything else (``mean_prob_covid``) as it is."""
    return _REGISTRY[key].words if key in _REGISTRY else key


def defined(key: str, labels_present: set[int]) -> bool:
    """Whether a set holding these labels gives the metric a meaning (AUROC needs both classes)."""
    return get(key).needs_classes <= set(labels_present)


# --- the computations -------------------------------------------------------------------------------------------
def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den, 0 where den is 0 (torchmetrics' convention)."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def confusion(labels: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[np.ndarray, ...]:
    """(tp, tn, fp, fn) along the last axis, a call being P(COVID) > threshold."""
    y = np.asarray(labels, bool)
    pred = np.asarray(probs, float) > threshold
    y, pred = np.broadcast_arrays(y, pred)
    return (pred & y).sum(-1), (~pred & ~y).sum(-1), (pred & ~y).sum(-1), (~pred & y).sum(-1)


def auroc(labels: np.ndarray, probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """AUROC along the last axis (rows are independent samples); NaN where a row lacks a class. No threshold."""
    labels = np.asarray(labels, bool)
    probs = np.asarray(probs, float)
    labels, probs = np.broadcast_arrays(labels, probs)
    # average ranks (1-based) within runs of tied values: multiples of 1/2, so their sums below are exact
    ranks = rankdata(probs, method="average", axis=-1)
    y = labels
    n = probs.shape[-1]
    n_pos = y.sum(-1)
    n_neg = n - n_pos
    u = (ranks * y).sum(-1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def accuracy(labels, probs, threshold):
    tp, tn, _, _ = confusion(labels, probs, threshold)
    return ratio(tp + tn, np.broadcast_shapes(np.shape(labels), np.shape(probs))[-1])


def f1(labels, probs, threshold):
    tp, _, fp, fn = confusion(labels, probs, threshold)
    return ratio(2 * tp, 2 * tp + fp + fn)


def sensitivity(labels, probs, threshold):
    tp, _, _, fn = confusion(labels, probs, threshold)
    return ratio(tp, tp + fn)


def specificity(labels, probs, threshold):
    _, tn, fp, _ = confusion(labels, probs, threshold)
    return ratio(tn, tn + fp)


def precision(labels, probs, threshold):
    tp, _, fp, _ = confusion(labels, probs, threshold)
    return ratio(tp, tp + fp)


BOTH = frozenset({0, 1})
register(Metric("acc", accuracy, "acc", "accuracy", logged_as="BinaryAccuracy", rank=1,
                tables=frozenset({"comparison", "sets", "external", "external_differences", "ensemble"})))
register(Metric("auroc", auroc, "AUROC", "AUROC", needs_threshold=False, needs_classes=BOTH, logged_as="BinaryAUROC", rank=0))
register(Metric("f1", f1, "F1", "F1", needs_classes=frozenset({1}), logged_as="BinaryF1Score", rank=4, tables=frozenset({"sets"})))
register(Metric("sensitivity", sensitivity, "sensitivity", "sensitivity", needs_classes=frozenset({1}), logged_as="BinaryRecall",
                rank=2, tables=frozenset({"sets", "external", "external_differences", "sources", "ensemble"})))
register(Metric("specificity", specificity, "specificity", "specificity", needs_classes=frozenset({0}), logged_as="BinarySpecificity",
                rank=3, tables=frozenset({"sets", "external", "sources", "ensemble"})))
register(Metric("precision", precision, "precision", "precision", needs_classes=BOTH, logged_as="BinaryPrecision", rank=5,
                tables=frozenset()))
