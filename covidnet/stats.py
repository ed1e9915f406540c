"""Test-set metrics from saved predictions, and percentile-bootstrap intervals over test images.

Metrics follow torchmetrics (what training logs): COVID (label 1) is positive, a prediction is
positive when P(COVID) > 0.5, a ratio with an empty denominator is 0, and AUROC counts ties as
half (Mann-Whitney). So the point values here match ``metrics.json`` up to the 6-decimal rounding
of ``predictions_test.csv``.

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

Two intervals compare two arms (settings) on the same test images. ``paired_difference`` resamples images
only: its interval is for these trained models, and says nothing about retraining. ``seed_paired_difference``
also resamples each arm's runs (seeds), so it is the one that can back "B is better than A on this data";
``verdict`` turns it into better / worse / equivalent (against a margin fixed in advance) / not resolved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

THRESHOLD = 0.5
METRICS = ("acc", "auroc", "f1", "sensitivity", "specificity", "precision")
DEFAULT_BOOT = 2000
DEFAULT_SEED = 0


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den, 0 where den is 0 (torchmetrics' convention)."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def auroc(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """AUROC along the last axis (rows are independent samples); NaN where a row lacks a class."""
    labels = np.asarray(labels, bool)
    probs = np.asarray(probs, float)
    labels, probs = np.broadcast_arrays(labels, probs)
    order = np.argsort(probs, axis=-1, kind="stable")
    p = np.take_along_axis(probs, order, -1)
    y = np.take_along_axis(labels, order, -1)
    n = p.shape[-1]
    # average ranks (1-based) within runs of tied values
    ranks = np.broadcast_to(np.arange(1, n + 1, dtype=float), p.shape).copy()
    new_run = np.ones(p.shape, bool)
    new_run[..., 1:] = p[..., 1:] != p[..., :-1]
    run_id = np.cumsum(new_run, axis=-1) - 1
    flat_id = (run_id + (np.arange(int(np.prod(p.shape[:-1]))).reshape(p.shape[:-1] + (1,)) * n)).ravel()
    sums = np.bincount(flat_id, weights=ranks.ravel(), minlength=flat_id.max() + 1)
    counts = np.bincount(flat_id, minlength=flat_id.max() + 1)
    ranks = (sums / np.maximum(counts, 1))[flat_id].reshape(p.shape)
    n_pos = y.sum(-1)
    n_neg = n - n_pos
    u = (ranks * y).sum(-1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """All of ``METRICS`` along the last axis (scalars for 1-D input)."""
    y = np.asarray(labels, bool)
    pred = np.asarray(probs, float) > THRESHOLD
    y, pred = np.broadcast_arrays(y, pred)
    tp = (pred & y).sum(-1)
    tn = (~pred & ~y).sum(-1)
    fp = (pred & ~y).sum(-1)
    fn = (~pred & y).sum(-1)
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    return {
        "acc": _ratio(tp + tn, y.shape[-1]),
        "auroc": auroc(y, probs),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
    }


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
    return {m: np.asarray([r[m] for r in rows], float) for m in METRICS}


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

    def includes(self, value: float) -> bool:
        return self.low <= value <= self.high


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
    idx = resample(len(labels), groups, labels, n_boot, seed)
    point = binary_metrics(labels, probs)
    boot = metrics_on_resamples(labels, probs, idx)
    return {m: percentile_interval(float(point[m]), boot[m], alpha) for m in METRICS}


def bootstrap_mean(
    values: Sequence[float], n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED, alpha: float = 0.05, groups: Sequence | None = None
) -> Interval:
    """Mean (e.g. of P(COVID)) with its percentile-bootstrap interval, resampling images or patients."""
    v = np.asarray(values, float)
    idx = resample(v.size, groups, np.zeros(v.size, int), n_boot, seed)
    boot = v[idx].mean(-1) if isinstance(idx, np.ndarray) else np.asarray([v[i].mean() for i in idx])
    return percentile_interval(float(v.mean()), boot, alpha)


def paired_difference(
    labels: Sequence[int],
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    metrics: Sequence[str] = ("auroc", "acc"),
    n_boot: int = DEFAULT_BOOT,
    seed: int = DEFAULT_SEED,
    alpha: float = 0.05,
    groups: Sequence | None = None,
) -> dict[str, Interval]:
    """Mean metric of the runs of arm A minus that of arm B, on the same resampled test images.

    ``probs_a`` / ``probs_b`` have shape (runs, images) with columns aligned to ``labels`` (one row
    per seed; the arms may have different numbers of seeds). On each resample the metric is computed
    for every run and averaged over the runs of each arm, then the arm means are subtracted; so the
    estimate is the difference of the seed-mean metrics in the summary table, and the interval
    reflects which test images were drawn, for these trained models. With ``groups`` (a patient id per
    image) whole patients are drawn. Note the direction: A minus B. Training randomness is not in this
    interval; for a claim about the settings use ``seed_paired_difference`` (B minus A).
    """
    point_a, point_b, boot_a, boot_b = _arm_metrics(labels, probs_a, probs_b, n_boot, seed, groups)
    return {m: _fixed_interval(point_a[m], point_b[m], boot_a[m], boot_b[m], alpha) for m in metrics}


def _arms(labels: Sequence[int], runs_a, runs_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """labels and both arms as arrays, (runs, images) each, checked against each other."""
    labels = np.asarray(labels)
    a, b = np.atleast_2d(np.asarray(runs_a, float)), np.atleast_2d(np.asarray(runs_b, float))
    if a.shape[1] != labels.size or b.shape[1] != labels.size:
        raise ValueError(f"Predictions ({a.shape[1]}, {b.shape[1]} images) do not match the {labels.size} labels.")
    return labels, a, b


def _arm_metrics(labels, runs_a, runs_b, n_boot: int, seed: int, groups) -> tuple[dict, dict, dict, dict]:
    """Every metric of every run of both arms on all images and on the same image (or patient) resamples:
    what both intervals of a comparison are computed from (``_run_metrics``)."""
    labels, a, b = _arms(labels, runs_a, runs_b)
    idx = resample(labels.size, groups, labels, n_boot, seed)
    return _run_metrics(labels, a, None), _run_metrics(labels, b, None), _run_metrics(labels, a, idx), _run_metrics(labels, b, idx)


def _fixed_interval(point_a: np.ndarray, point_b: np.ndarray, boot_a: np.ndarray, boot_b: np.ndarray, alpha: float) -> Interval:
    """Seed-mean A minus seed-mean B on the same resamples, the runs held fixed (``paired_difference``)."""
    return percentile_interval(float(point_a.mean() - point_b.mean()), boot_a.mean(0) - boot_b.mean(0), alpha)


def _run_metrics(labels: np.ndarray, runs: np.ndarray, resamples) -> dict[str, np.ndarray]:
    """Every metric of every run (rows of ``runs``): shape (runs,) on all images (``resamples`` None), else
    (runs, n_boot) on each resample. Computed once per comparison, shared by both of its intervals."""
    per = [binary_metrics(labels, p) if resamples is None else metrics_on_resamples(labels, p, resamples) for p in runs]
    return {m: np.stack([np.asarray(r[m], float) for r in per]) for m in METRICS}


@dataclass(frozen=True)
class SeedInterval:
    """B minus A in one metric, with a 95 % interval that covers both sources of chance: which test images
    (or patients) were drawn and which training runs (seeds) each arm happened to get.

    ``estimate`` is the seed-mean metric of arm B minus that of arm A on all test images. ``judgeable`` is
    False when an arm has fewer runs than the ``min_runs`` asked for: a bootstrap over one or two seeds says
    nothing about training randomness, so no interval is given (``low``/``high`` None, ``n_boot`` 0).
    ``n_undefined`` counts draws whose metric does not exist (AUROC on a resample with one class only)."""

    estimate: float
    low: float | None
    high: float | None
    n_boot: int
    n_undefined: int
    n_runs_a: int
    n_runs_b: int
    paired: bool
    judgeable: bool
    metric: str = ""

    @property
    def text(self) -> str:
        """``+0.126 [-0.130, +0.380]``, or the estimate with "not enough seeds to judge" / "no interval"."""
        return signed(self) if self.judgeable else f"{self.estimate:+.3f} (not enough seeds to judge)"


def signed(iv: Interval | SeedInterval) -> str:
    """A difference as text, signed: ``+0.126 [-0.130, +0.380]``; without a finite interval, say so."""
    if iv.low is None or not (math.isfinite(iv.low) and math.isfinite(iv.high)):
        return f"{iv.estimate:+.3f} (no interval: no resample held both classes)"
    return f"{iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]"


def _run_draws(n_a: int, n_b: int, paired: bool, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Resampled run indices of each arm, shapes (n_boot, n_a) and (n_boot, n_b).

    A stream of its own, so the image draws stay those of ``bootstrap_metrics`` / ``paired_difference`` with
    the same seed: ``rng = np.random.default_rng([seed, 1])``; paired: ``rng.integers(0, n, (n_boot, n))``
    used for both arms (a draw keeps seed i of A with seed i of B); unpaired: A's draw, then B's."""
    rng = np.random.default_rng([seed, 1])
    runs_a = rng.integers(0, n_a, size=(n_boot, n_a))
    return runs_a, (runs_a if paired else rng.integers(0, n_b, size=(n_boot, n_b)))


def seed_paired_difference(
    labels: Sequence[int],
    runs_a: Sequence[np.ndarray],
    runs_b: Sequence[np.ndarray],
    metric: str = "auroc",
    n_boot: int = DEFAULT_BOOT,
    seed: int = DEFAULT_SEED,
    groups: Sequence | None = None,
    paired: bool | None = None,
    min_runs: int = 3,
    alpha: float = 0.05,
) -> SeedInterval:
    """Seed-mean ``metric`` of arm B minus that of arm A ("B minus A"), with an interval over test images
    *and* training runs: the interval behind a claim that one setting beats another on this data.

    ``paired_difference`` holds the trained models fixed, so its interval says nothing about whether
    retraining with other seeds would give the same answer; with three seeds of AUROC 0.74 / 0.55 / 0.68
    that second source of chance is usually the larger one. Here each of ``n_boot`` draws resamples the
    runs of each arm with replacement (``_run_draws``; the same indices for both arms when ``paired``, i.e.
    ``runs_a[i]`` and ``runs_b[i]`` were trained with the same seed) and the test images, or with ``groups``
    the patients stratified by label (``resample``, the same draw for both arms), and recomputes the mean
    metric of each arm's drawn runs on the drawn images. ``labels`` is (N,) 0/1; every run is (N,) P(COVID)
    in the same image order. ``paired`` defaults to True iff both arms have the same number of runs.
    """
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; one of {', '.join(METRICS)}.")
    labels, a, b = _arms(labels, runs_a, runs_b)
    paired = _pairing(len(a), len(b), paired)
    if min(len(a), len(b)) < min_runs:  # no resampling needed: there will be no interval
        return _seed_interval(metric, _run_metrics(labels, a, None)[metric], _run_metrics(labels, b, None)[metric], None, None,
                              paired, n_boot, seed, alpha)
    point_a, point_b, boot_a, boot_b = _arm_metrics(labels, a, b, n_boot, seed, groups)
    return _seed_interval(metric, point_a[metric], point_b[metric], boot_a[metric], boot_b[metric], paired, n_boot, seed, alpha)


def _pairing(n_a: int, n_b: int, paired: bool | None) -> bool:
    """Whether runs are paired by seed: as asked, by default when both arms have as many runs."""
    paired = n_a == n_b if paired is None else bool(paired)
    if paired and n_a != n_b:
        raise ValueError(f"Paired by seed needs the same runs in both arms, not {n_a} and {n_b}.")
    return paired


def _seed_interval(metric: str, point_a: np.ndarray, point_b: np.ndarray, boot_a: np.ndarray | None, boot_b: np.ndarray | None,
                   paired: bool, n_boot: int, seed: int, alpha: float) -> SeedInterval:
    """The seed-aware interval from each run's metric on all images (``point_*``, (runs,)) and on each image draw
    (``boot_*``, (runs, n_boot); None when an arm has too few runs): draw k averages, per arm, the rows of the runs
    that ``_run_draws`` drew for it, at column k."""
    n_a, n_b = len(point_a), len(point_b)
    estimate = float(point_b.mean() - point_a.mean())
    if boot_a is None or boot_b is None:
        return SeedInterval(estimate, None, None, 0, 0, n_a, n_b, paired, False, metric)
    draw_a, draw_b = _run_draws(n_a, n_b, paired, n_boot, seed)
    cols = np.arange(n_boot)[:, None]
    iv = percentile_interval(estimate, boot_b[draw_b, cols].mean(-1) - boot_a[draw_a, cols].mean(-1), alpha)
    return SeedInterval(estimate, iv.low, iv.high, iv.n_boot, iv.n_undefined, n_a, n_b, paired, True, metric)


def verdict(interval: SeedInterval, margin: float | None = None) -> str:
    """What the seed-aware interval lets one say about B against A.

    "better" / "worse": the interval excludes 0 (B above / below A; every metric here is higher-is-better), also
    when it lies inside the margin (a difference, smaller than the margin).
    "equivalent": both ends within ±``margin``, a margin that must have been fixed before the runs (one
    chosen after seeing the interval proves nothing); without a margin there is no equivalence claim.
    "not resolved": anything else, including no finite interval. "not enough seeds to judge": an arm has
    too few runs for a seed-aware interval."""
    if not interval.judgeable:
        return "not enough seeds to judge"
    low, high = interval.low, interval.high
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "not resolved"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    if margin is not None and -margin <= low and high <= margin:
        return "equivalent"
    return "not resolved"


def arm_differences(
    labels: Sequence[int],
    runs_a: Sequence[np.ndarray],
    runs_b: Sequence[np.ndarray],
    metrics: Sequence[str] = ("auroc", "acc"),
    seeds_a: Sequence | None = None,
    seeds_b: Sequence | None = None,
    n_boot: int = DEFAULT_BOOT,
    seed: int = DEFAULT_SEED,
    groups: Sequence | None = None,
    min_runs: int = 3,
    alpha: float = 0.05,
) -> tuple[dict[str, Interval], dict[str, SeedInterval]]:
    """B minus A per metric, both ways a comparison is shown: (for these trained models, over seeds and test images).

    The first (``paired_difference``, images only) is context; the second (``seed_paired_difference``) backs a
    verdict. With the seed of every run given, the arms are paired by seed when both ran the same distinct seeds
    (rows reordered so that row i of each is the same seed) and unpaired otherwise; without seeds,
    ``seed_paired_difference``'s default applies (paired iff both have as many runs)."""
    a, b = np.atleast_2d(np.asarray(runs_a, float)), np.atleast_2d(np.asarray(runs_b, float))
    paired = None
    if seeds_a is not None and seeds_b is not None:
        sa, sb = [str(s) for s in seeds_a], [str(s) for s in seeds_b]
        paired = sorted(sa) == sorted(sb) and len(set(sa)) == len(sa)
        if paired:
            a, b = a[np.argsort(sa, kind="stable")], b[np.argsort(sb, kind="stable")]
    paired = _pairing(len(a), len(b), paired)
    # what paired_difference and seed_paired_difference compute, once for both intervals and every metric
    point_a, point_b, boot_a, boot_b = _arm_metrics(labels, a, b, n_boot, seed, groups)
    judge = min(len(a), len(b)) >= min_runs
    fixed = {m: _fixed_interval(point_b[m], point_a[m], boot_b[m], boot_a[m], alpha) for m in metrics}
    seeded = {m: _seed_interval(m, point_a[m], point_b[m], boot_a[m] if judge else None, boot_b[m] if judge else None, paired, n_boot,
                                seed, alpha) for m in metrics}
    return fixed, seeded


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

