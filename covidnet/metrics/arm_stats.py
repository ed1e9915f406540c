"""Two arms (settings) compared on the same test images: B minus A in a metric, with its intervals.

``paired_difference`` resamples images only: its interval is for these trained models, and says nothing about
retraining. ``seed_paired_difference`` also resamples each arm's runs (seeds), so it is the one that can back
"B is better than A on this data"; ``verdict`` turns it into better / worse / equivalent (against a margin fixed
in advance) / not resolved. ``arm_differences`` gives both for every metric from one set of resamples.

The image (or patient) resamples, the metrics and the percentile interval are those of :mod:`covidnet.metrics.stats`
(its docstring states the bootstrap protocol); run resamples draw from a stream of their own (``_run_draws``).
With too few images (or patients) per class for an interval (``covidnet.metrics.stats.too_few_units``), neither comparison
gives one: the estimate comes with the reason instead.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from covidnet.metrics import metric_registry as registry
from covidnet.metrics.stats import (
    DEFAULT_BOOT,
    DEFAULT_SEED,
    Interval,
    binary_metrics,
    bootstrap_indices,
    metrics_on_resamples,
    no_interval,
    percentile_interval,
    resample,
    signed,
    too_few_units,
)


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
    note = too_few_units(labels, groups)
    return {m: _fixed_interval(point_a[m], point_b[m], boot_a[m], boot_b[m], alpha, note) for m in metrics}


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


def _fixed_interval(point_a: np.ndarray, point_b: np.ndarray, boot_a: np.ndarray, boot_b: np.ndarray, alpha: float,
                    note: str | None = None) -> Interval:
    """Seed-mean A minus seed-mean B on the same resamples, the runs held fixed (``paired_difference``); with ``note``
    (too few units) the difference alone."""
    if note:
        return no_interval(float(point_a.mean() - point_b.mean()), note)
    return percentile_interval(float(point_a.mean() - point_b.mean()), boot_a.mean(0) - boot_b.mean(0), alpha)


def _run_metrics(labels: np.ndarray, runs: np.ndarray, resamples) -> dict[str, np.ndarray]:
    """Every metric of every run (rows of ``runs``): shape (runs,) on all images (``resamples`` None), else
    (runs, n_boot) on each resample. Computed once per comparison, shared by both of its intervals."""
    per = [binary_metrics(labels, p) if resamples is None else metrics_on_resamples(labels, p, resamples) for p in runs]
    return {m: np.stack([np.asarray(r[m], float) for r in per]) for m in registry.keys()}


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
    note: str | None = None  # why there is no interval although there are enough seeds (too few units per class)

    @property
    def text(self) -> str:
        """``+0.126 [-0.130, +0.380]``, or the estimate with "not enough seeds to judge" / "no interval"."""
        return signed(self) if self.judgeable else f"{self.estimate:+.3f} (not enough seeds to judge)"


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
    if metric not in registry.keys():
        raise ValueError(f"Unknown metric {metric!r}; one of {', '.join(registry.keys())}.")
    labels, a, b = _arms(labels, runs_a, runs_b)
    paired = _pairing(len(a), len(b), paired)
    if min(len(a), len(b)) < min_runs:  # no resampling needed: there will be no interval
        return _seed_interval(metric, _run_metrics(labels, a, None)[metric], _run_metrics(labels, b, None)[metric], None, None,
                              paired, n_boot, seed, alpha)
    point_a, point_b, boot_a, boot_b = _arm_metrics(labels, a, b, n_boot, seed, groups)
    return _seed_interval(metric, point_a[metric], point_b[metric], boot_a[metric], boot_b[metric], paired, n_boot, seed, alpha,
                          too_few_units(labels, groups))


def seed_mean_difference(
    values_a: Sequence[np.ndarray],
    values_b: Sequence[np.ndarray],
    name: str = "mean",
    n_boot: int = DEFAULT_BOOT,
    seed: int = DEFAULT_SEED,
    paired: bool | None = None,
    min_runs: int = 3,
    alpha: float = 0.05,
) -> SeedInterval:
    """Seed-mean of a per-image quantity of arm B minus that of arm A, with the interval over runs and images of
    :func:`seed_paired_difference`: for numbers that are a mean over images rather than a classification metric,
    e.g. the CAM mass inside a lesion. Each run is (N,) values in the same image order, NaN where the quantity is
    undefined for that image (an all-zero map has no mass to share): a run's value is the mean of its defined ones,
    on all images and on each image draw (``stats.bootstrap_indices``, the same draw for both arms)."""
    a, b = np.asarray(values_a, float), np.asarray(values_b, float)
    paired = _pairing(len(a), len(b), paired)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a draw of only undefined images: NaN, counted as undefined
        point_a, point_b = np.nanmean(a, axis=1), np.nanmean(b, axis=1)
        if min(len(a), len(b)) < min_runs:
            return _seed_interval(name, point_a, point_b, None, None, paired, n_boot, seed, alpha)
        idx = bootstrap_indices(a.shape[1], n_boot, seed)  # (n_boot, N)
        boot_a, boot_b = np.nanmean(a[:, idx], axis=2), np.nanmean(b[:, idx], axis=2)  # (runs, n_boot)
    return _seed_interval(name, point_a, point_b, boot_a, boot_b, paired, n_boot, seed, alpha)


def _pairing(n_a: int, n_b: int, paired: bool | None) -> bool:
    """Whether runs are paired by seed: as asked, by default when both arms have as many runs."""
    paired = n_a == n_b if paired is None else bool(paired)
    if paired and n_a != n_b:
        raise ValueError(f"Paired by seed needs the same runs in both arms, not {n_a} and {n_b}.")
    return paired


def _seed_interval(metric: str, point_a: np.ndarray, point_b: np.ndarray, boot_a: np.ndarray | None, boot_b: np.ndarray | None,
                   paired: bool, n_boot: int, seed: int, alpha: float, note: str | None = None) -> SeedInterval:
    """The seed-aware interval from each run's metric on all images (``point_*``, (runs,)) and on each image draw
    (``boot_*``, (runs, n_boot); None when an arm has too few runs): draw k averages, per arm, the rows of the runs
    that ``_run_draws`` drew for it, at column k."""
    n_a, n_b = len(point_a), len(point_b)
    estimate = float(point_b.mean() - point_a.mean())
    if boot_a is None or boot_b is None:
        return SeedInterval(estimate, None, None, 0, 0, n_a, n_b, paired, False, metric)
    if note:  # enough seeds, too few units: no interval (verdict: not resolved), and why
        return SeedInterval(estimate, None, None, 0, 0, n_a, n_b, paired, True, metric, note)
    draw_a, draw_b = _run_draws(n_a, n_b, paired, n_boot, seed)
    cols = np.arange(n_boot)[:, None]
    iv = percentile_interval(estimate, boot_b[draw_b, cols].mean(-1) - boot_a[draw_a, cols].mean(-1), alpha)
    return SeedInterval(estimate, iv.low, iv.high, iv.n_boot, iv.n_undefined, n_a, n_b, paired, True, metric)


def verdict(interval: SeedInterval, margin: float | None = None) -> str:
    """What the seed-aware interval lets one say about B against A.

    "better" / "worse": the interval excludes 0 (B above / below A for a higher-is-better metric, the other way
    round for one the registry marks lower-is-better), also when it lies inside the margin (a difference, smaller
    than the margin).
    "equivalent": both ends within ±``margin``, a margin that must have been fixed before the runs (one
    chosen after seeing the interval proves nothing); without a margin there is no equivalence claim.
    "not resolved": anything else, including no finite interval. "not enough seeds to judge": an arm has
    too few runs for a seed-aware interval."""
    if not interval.judgeable:
        return "not enough seeds to judge"
    low, high = interval.low, interval.high
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "not resolved"
    higher = registry.get(interval.metric).higher_is_better if interval.metric in registry.keys() else True
    if low > 0:
        return "better" if higher else "worse"
    if high < 0:
        return "worse" if higher else "better"
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
    note = too_few_units(labels, groups)
    fixed = {m: _fixed_interval(point_b[m], point_a[m], boot_b[m], boot_a[m], alpha, note) for m in metrics}
    seeded = {m: _seed_interval(m, point_a[m], point_b[m], boot_a[m] if judge else None, boot_b[m] if judge else None, paired, n_boot,
                                seed, alpha, note) for m in metrics}
    return fixed, seeded
