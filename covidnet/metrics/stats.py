"""Test-set metrics from saved predictions, and percentile-bootstrap intervals over test images.

The metrics are those of :mod:`covidnet.metrics.metric_registry` (one record each), with torchmetrics' conventions (what
training logs): COVID (label 1) is positive, a prediction is positive when P(COVID) > 0.5, a ratio with an empty
denominator is 0, and AUROC counts ties as half (Mann-Whitney). So the point values here match ``metrics.json`` up to
the 6-decimal rounding of ``predictions_test.csv``.

Bootstrap protocol (the same everywhere, so an interval can be recomputed independently):
``np.random.default_rng(seed).integers(0, n, size=(n_boot, n))`` gives the resampled image indices,
one row per resample; a statistic is computed on every row; the interval is the
``(alpha/2, 1 - alpha/2)`` percentile (numpy's default linear interpolation) of the finite values.
A resample holding one class only has no AUROC; it is left out and counted in ``n_undefined``.

Where images belong to patients (slices of a scan), images are not independent and resampling them would
give intervals far too narrow: pass ``groups`` (one patient id per image) and whole patients are resampled
instead, stratified by the patient's label (as many COVID patients as the set has, drawn from its COVID
patients, and likewise for non-COVID), so every resample holds both classes when the set does. Protocol:
``rng = np.random.default_rng(seed)``; per resample, per label in ascending order, ``rng.integers(0, k, k)``
over that label's k patients in order of first appearance; the resample is the concatenation of the drawn
patients' images (in image order within a patient).

Too few units, no interval: with fewer than ``MIN_UNITS_PER_CLASS`` (5) images per class, or patients per class where
patients are resampled, no interval is given (``low``/``high`` NaN and ``note`` says why). With one patient per class
every patient resample is the set itself, and the "95 %" interval would have width zero; a handful of units gives
intervals that look far more certain than the data allow.

Comparing two arms (settings) on the same test images, with these resamples: :mod:`covidnet.metrics.arm_stats`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from covidnet.metrics import metric_registry as registry
from covidnet.metrics.metric_registry import THRESHOLD

DEFAULT_BOOT = 2000
DEFAULT_SEED = 0
# fewer units (images, or patients where patients are resampled) than this in a class: no interval (module docstring)
MIN_UNITS_PER_CLASS = 5


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """Every registered metric along the last axis (scalars for 1-D input), in registration order."""
    return {key: registry.get(key).compute(labels, probs, THRESHOLD) for key in registry.keys()}


def bootstrap_indices(n: int, n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Resampled test-image indices, shape (n_boot, n); the protocol in the module docstring."""
    if n < 1:
        raise ValueError("Cannot bootstrap an empty test set.")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def patient_bootstrap_indices(
    groups: Sequence, labels: Sequence[int], n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED
) -> list[np.ndarray]:
    """Resampled image indices, one array per resample, drawing whole patients (the protocol in the module docstring)."""
    groups = list(groups)
    labels = np.asarray(labels)
    if not groups:
        raise ValueError("Cannot bootstrap an empty test set.")
    order: dict = {}
    for i, g in enumerate(groups):
        order.setdefault(g, []).append(i)
    members = [np.asarray(v) for v in order.values()]
    group_label = []
    for g, idx in zip(order, members):
        values = set(labels[idx].tolist())
        if len(values) != 1:
            raise ValueError(f"Patient {g!r} has images with different labels {sorted(values)}; a patient has one label.")
        group_label.append(values.pop())
    strata = [np.flatnonzero(np.asarray(group_label) == lab) for lab in sorted(set(group_label))]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        drawn = [stratum[rng.integers(0, stratum.size, stratum.size)] for stratum in strata]
        out.append(np.concatenate([members[g] for g in np.concatenate(drawn)]))
    return out


def metrics_on_resamples(labels: np.ndarray, probs: np.ndarray, resamples) -> dict[str, np.ndarray]:
    """Every metric on every resample: ``resamples`` is an (n_boot, n) index array or a list of index arrays."""
    labels, probs = np.asarray(labels), np.asarray(probs, float)
    if isinstance(resamples, np.ndarray) and resamples.ndim == 2:
        return binary_metrics(labels[resamples], probs[resamples])
    rows = [binary_metrics(labels[idx], probs[idx]) for idx in resamples]
    return {m: np.asarray([r[m] for r in rows], float) for m in registry.keys()}


def too_few_units(labels: Sequence[int], groups: Sequence | None = None, minimum: int = MIN_UNITS_PER_CLASS) -> str | None:
    """Why no interval can be given (``n/a: too few patients per class ...``), or None when every class present has
    at least ``minimum`` units: patients where ``groups`` is given (they are what is resampled), else images."""
    labels = np.asarray(labels)
    unit = "patient" if groups is not None else "image"
    first = dict(zip(groups, labels.tolist())) if groups is not None else None  # one label per patient (checked on resampling)
    counts = Counter(first.values() if first is not None else labels.tolist())
    if all(n >= minimum for n in counts.values()):
        return None
    have = ", ".join(f"{counts.get(lab, 0)} {name}" for lab, name in ((1, "COVID"), (0, "non-COVID")) if lab in counts)
    return f"n/a: too few {unit}s per class ({have}; an interval needs at least {minimum} of each)"


def resample(n: int, groups: Sequence | None, labels: Sequence[int], n_boot: int, seed: int):
    """Image resamples (an array) or, with ``groups``, patient resamples (a list of arrays)."""
    return bootstrap_indices(n, n_boot, seed) if groups is None else patient_bootstrap_indices(groups, labels, n_boot, seed)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n_boot: int
    n_undefined: int = 0
    note: str | None = None  # why there is no interval (too_few_units), where there is none for that reason

    def includes(self, value: float) -> bool:
        return self.low <= value <= self.high


def no_interval(estimate: float, note: str) -> Interval:
    """The estimate alone: ``low``/``high`` NaN, nothing resampled, and ``note`` saying why."""
    return Interval(float(estimate), float("nan"), float("nan"), 0, 0, note)


def percentile_interval(estimate: float, samples: np.ndarray, alpha: float = 0.05) -> Interval:
    samples = np.asarray(samples, float)
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return Interval(float(estimate), float("nan"), float("nan"), samples.size, samples.size)
    low, high = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return Interval(float(estimate), float(low), float(high), samples.size, samples.size - finite.size)


def bootstrap_metrics(
    labels: Sequence[int],
    probs: Sequence[float],
    n_boot: int = DEFAULT_BOOT,
    seed: int = DEFAULT_SEED,
    alpha: float = 0.05,
    groups: Sequence | None = None,
) -> dict[str, Interval]:
    """Point value and percentile-bootstrap interval of every metric for one run's test predictions
    (``groups``: one patient id per image, to resample patients)."""
    labels, probs = np.asarray(labels), np.asarray(probs, float)
    point = binary_metrics(labels, probs)
    note = too_few_units(labels, groups)
    if note:
        return {m: no_interval(float(point[m]), note) for m in registry.keys()}
    idx = resample(len(labels), groups, labels, n_boot, seed)
    boot = metrics_on_resamples(labels, probs, idx)
    return {m: percentile_interval(float(point[m]), boot[m], alpha) for m in registry.keys()}


def bootstrap_mean(
    values: Sequence[float], n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED, alpha: float = 0.05, groups: Sequence | None = None
) -> Interval:
    """Mean (e.g. of P(COVID)) with its percentile-bootstrap interval, resampling images or patients."""
    v = np.asarray(values, float)
    units = len(set(groups)) if groups is not None else v.size  # one stratum: the units of the whole set
    if units < MIN_UNITS_PER_CLASS:
        unit = "patient" if groups is not None else "image"
        return no_interval(float(v.mean()), f"n/a: too few {unit}s ({units}; an interval needs at least {MIN_UNITS_PER_CLASS})")
    idx = resample(v.size, groups, np.zeros(v.size, int), n_boot, seed)
    boot = v[idx].mean(-1) if isinstance(idx, np.ndarray) else np.asarray([v[i].mean() for i in idx])
    return percentile_interval(float(v.mean()), boot, alpha)


def signed(iv) -> str:
    """A difference as text, signed: ``+0.126 [-0.130, +0.380]``; without a finite interval, say so. ``iv``: an
    :class:`Interval` or a :class:`covidnet.metrics.arm_stats.SeedInterval` (whose ``low`` may be None)."""
    if getattr(iv, "note", None):
        return f"{iv.estimate:+.3f} ({iv.note})"
    if iv.low is None or not (math.isfinite(iv.low) and math.isfinite(iv.high)):
        return f"{iv.estimate:+.3f} (no interval: no resample held both classes)"
    return f"{iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than two values)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")


def roc_curve(labels: Sequence[int], probs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) over all thresholds, from (0, 0) to (1, 1)."""
    y = np.asarray(labels, bool)
    p = np.asarray(probs, float)
    order = np.argsort(-p, kind="stable")
    y, p = y[order], p[order]
    last_of_tie = np.r_[p[1:] != p[:-1], True]
    tps = np.cumsum(y)[last_of_tie]
    fps = np.cumsum(~y)[last_of_tie]
    tpr = np.r_[0.0, tps / max(y.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~y).sum(), 1)]
    return fpr, tpr

