"""The seed-aware paired difference (covidnet.metrics.arm_stats.seed_paired_difference) and its verdict.

The wide-interval, closed-form and pairing tests fail when the runs are not resampled (an image-only
interval), the reference-loop tests when the documented draw protocol changes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covidnet.metrics import arm_stats, stats
from reference_metrics import auroc_by_pairs

N_BOOT = 400




def runs_of_quality(labels, strengths, rng) -> np.ndarray:
    """One run per strength: P(COVID) = sigmoid(strength * (2y - 1) + noise), so strength sets the run's AUROC."""
    logits = np.asarray(strengths, float)[:, None] * (2 * labels - 1) + rng.normal(size=(len(strengths), labels.size))
    return 1 / (1 + np.exp(-logits))


def reference(labels, a, b, metric, n_boot, seed, paired, groups=None) -> tuple[float, float, list[float]]:
    """The documented protocol written as a loop: image (or patient) draw k, run draw k, seed-mean of each arm."""
    n = labels.size
    if groups is None:
        images = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    else:
        images = stats.patient_bootstrap_indices(groups, labels, n_boot, seed)
    rng = np.random.default_rng([seed, 1])
    runs_a = rng.integers(0, len(a), size=(n_boot, len(a)))
    runs_b = runs_a if paired else rng.integers(0, len(b), size=(n_boot, len(b)))

    def value(y, p):
        if metric == "auroc":
            return auroc_by_pairs(y, p)
        return float(np.mean((p > 0.5) == (y == 1)))

    diffs = []
    for k in range(n_boot):
        img = images[k]
        mean_a = np.mean([value(labels[img], a[i][img]) for i in runs_a[k]])
        mean_b = np.mean([value(labels[img], b[i][img]) for i in runs_b[k]])
        if not math.isnan(mean_b - mean_a):
            diffs.append(mean_b - mean_a)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high), diffs


def test_seeds_that_disagree_give_a_wide_interval_that_ignoring_seeds_would_make_narrow():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 300)
    a = runs_of_quality(labels, [0.2, 2.5, 1.0], rng)  # AUROC about 0.6, 0.97, 0.8
    b = runs_of_quality(labels, [2.0, 0.4, 1.6], rng)  # same spread, other order
    seeds = arm_stats.seed_paired_difference(labels, a, b, "auroc", n_boot=N_BOOT, seed=1, paired=False)
    images = arm_stats.paired_difference(labels, b, a, ("auroc",), n_boot=N_BOOT, seed=1)["auroc"]  # B minus A, fixed models
    assert seeds.estimate == pytest.approx(images.estimate, abs=1e-12)
    assert seeds.judgeable and not seeds.paired and (seeds.n_runs_a, seeds.n_runs_b) == (3, 3)
    assert images.high - images.low < 0.05  # 600 images: the fixed models are well measured...
    assert seeds.high - seeds.low > 5 * (images.high - images.low)  # ...the settings are not
    assert seeds.low < 0 < seeds.high
    assert arm_stats.verdict(seeds, margin=0.05) == "not resolved"


def test_matches_a_reference_loop_unpaired_and_paired():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 14)
    a = runs_of_quality(labels, [0.5, 1.5, 3.0], rng)
    b = runs_of_quality(labels, [1.0, 0.2, 2.0, 2.5], rng)
    for metric in ("auroc", "acc"):
        got = arm_stats.seed_paired_difference(labels, list(a), list(b), metric, n_boot=150, seed=4)
        low, high, diffs = reference(labels, a, b, metric, 150, 4, paired=False)
        assert not got.paired and got.n_boot == 150 and got.n_undefined == 150 - len(diffs)
        assert (got.low, got.high) == pytest.approx((low, high), abs=1e-12)
    b3 = b[:3]
    got = arm_stats.seed_paired_difference(labels, a, b3, "auroc", n_boot=150, seed=4)
    low, high, _ = reference(labels, a, b3, "auroc", 150, 4, paired=True)
    point = np.mean([auroc_by_pairs(labels, p) for p in b3]) - np.mean([auroc_by_pairs(labels, p) for p in a])
    assert got.paired and got.estimate == pytest.approx(point, abs=1e-12)
    assert (got.low, got.high) == pytest.approx((low, high), abs=1e-12)


def test_matches_a_reference_loop_over_patients():
    labels = np.repeat([0, 1, 0, 1, 1, 0, 1, 0, 1, 0], 3)  # 10 patients (5 per class: the fewest with an interval), 3 slices each
    groups = np.repeat(np.arange(10), 3)
    rng = np.random.default_rng(5)
    a = runs_of_quality(labels, [0.3, 1.0, 2.0], rng)
    b = runs_of_quality(labels, [1.5, 0.8, 2.5], rng)
    got = arm_stats.seed_paired_difference(labels, a, b, "auroc", n_boot=120, seed=2, groups=groups)
    low, high, diffs = reference(labels, a, b, "auroc", 120, 2, paired=True, groups=groups)
    assert got.n_undefined == 0 == 120 - len(diffs)  # stratified by label: every patient draw has both classes
    assert (got.low, got.high) == pytest.approx((low, high), abs=1e-12)
    by_image = arm_stats.seed_paired_difference(labels, a, b, "auroc", n_boot=120, seed=2)
    assert (by_image.low, by_image.high) != (got.low, got.high)
    with pytest.raises(ValueError, match="different labels"):
        arm_stats.seed_paired_difference(labels, a, b, groups=np.zeros(labels.size))


def test_accuracy_interval_matches_the_closed_form_of_a_seed_only_bootstrap():
    """Runs that are right (or wrong) on every image have the same accuracy on every image draw, so only the
    run draw varies: B (four right runs) minus A (three right, one wrong) is k/4 with k ~ Binomial(4, 1/4)
    the number of draws of the wrong run. 2.5 %: P(k=0) = 0.32 -> 0; 97.5 %: P(k<=2) = 0.95, P(k<=3) = 0.996
    -> 0.75. Resampling images only would give exactly 0.25."""
    labels = np.array([0, 1] * 10)
    right, wrong = np.where(labels == 1, 0.9, 0.1), np.where(labels == 1, 0.1, 0.9)
    a = [right, right, wrong, right]
    b = [right] * 4
    for paired in (True, False):
        got = arm_stats.seed_paired_difference(labels, a, b, "acc", n_boot=2000, seed=0, paired=paired)
        assert (got.estimate, got.low, got.high) == pytest.approx((0.25, 0.0, 0.75), abs=1e-12)
        assert arm_stats.verdict(got) == "not resolved"
    fixed = arm_stats.paired_difference(labels, b, a, ("acc",), n_boot=200)["acc"]
    assert (fixed.low, fixed.high) == pytest.approx((0.25, 0.25))


def test_pairing_by_seed_removes_the_seed_effect_both_arms_share():
    """Seed i is good or bad for both arms alike and B adds the same gain to each: paired, the gain is clear;
    unpaired, the spread between seeds hides it."""
    rng = np.random.default_rng(8)
    labels = np.repeat([0, 1], 150)
    strengths = np.array([0.3, 2.5, 1.0, 1.8])
    noise = rng.normal(size=(4, labels.size))
    a = 1 / (1 + np.exp(-(strengths[:, None] * (2 * labels - 1) + noise)))
    b = 1 / (1 + np.exp(-((strengths[:, None] + 0.4) * (2 * labels - 1) + noise)))
    paired = arm_stats.seed_paired_difference(labels, a, b, "auroc", n_boot=N_BOOT, seed=0)
    unpaired = arm_stats.seed_paired_difference(labels, a, b, "auroc", n_boot=N_BOOT, seed=0, paired=False)
    assert paired.paired and not unpaired.paired
    assert paired.estimate == unpaired.estimate > 0
    assert arm_stats.verdict(paired) == "better" and arm_stats.verdict(unpaired) == "not resolved"
    assert arm_stats.verdict(arm_stats.seed_paired_difference(labels, b, a, "auroc", n_boot=N_BOOT, seed=0)) == "worse"
    with pytest.raises(ValueError, match="same runs"):
        arm_stats.seed_paired_difference(labels, a, b[:3], paired=True)


def test_fewer_than_min_runs_is_not_judgeable():
    labels = np.array([0, 1] * 5)
    p = np.where(labels == 1, 0.8, 0.3)
    got = arm_stats.seed_paired_difference(labels, [p, p, p], [p, 1 - p], "auroc", n_boot=50)
    assert not got.judgeable and got.low is None and got.high is None and got.n_boot == 0
    assert got.estimate == pytest.approx(-0.5)
    assert "not enough seeds to judge" in got.text
    assert arm_stats.verdict(got, margin=1.0) == "not enough seeds to judge"
    lowered = arm_stats.seed_paired_difference(labels, [p, p, p], [p, 1 - p], "auroc", n_boot=50, min_runs=2)
    assert lowered.judgeable and lowered.low is not None and "[" in lowered.text
    with pytest.raises(ValueError, match="Unknown metric"):
        arm_stats.seed_paired_difference(labels, [p] * 3, [p] * 3, "kappa")


def interval(low, high, judgeable=True) -> arm_stats.SeedInterval:
    return arm_stats.SeedInterval((low + high) / 2, low, high, 100, 0, 3, 3, True, judgeable)


@pytest.mark.parametrize(
    ("low", "high", "margin", "expected"),
    [
        (0.01, 0.05, None, "better"),
        (0.01, 0.05, 0.1, "better"),  # excludes 0 wins over equivalence
        (-0.05, -0.001, None, "worse"),
        (-0.01, 0.02, None, "not resolved"),  # no margin stated: no equivalence claim
        (-0.01, 0.02, 0.03, "equivalent"),
        (-0.01, 0.02, 0.015, "not resolved"),  # the upper end leaves the margin
        (-0.04, 0.02, 0.03, "not resolved"),  # the lower end leaves it
        (float("nan"), float("nan"), 0.03, "not resolved"),
    ],
)
def test_verdict(low, high, margin, expected):
    assert arm_stats.verdict(interval(low, high), margin) == expected


def test_verdict_without_enough_seeds():
    iv = arm_stats.SeedInterval(0.1, None, None, 0, 0, 2, 3, False, False)
    assert arm_stats.verdict(iv) == arm_stats.verdict(iv, 0.5) == "not enough seeds to judge"


def test_arm_differences_pair_by_seed_name_and_show_both_intervals():
    """Runs listed in different seed orders are still paired seed by seed; other seeds leave the arms unpaired."""
    rng = np.random.default_rng(8)
    labels = np.repeat([0, 1], 100)
    strengths = np.array([0.3, 2.5, 1.0])
    noise = rng.normal(size=(3, labels.size))
    a = 1 / (1 + np.exp(-(strengths[:, None] * (2 * labels - 1) + noise)))
    b = 1 / (1 + np.exp(-((strengths[:, None] + 0.4) * (2 * labels - 1) + noise)))
    fixed, seeded = arm_stats.arm_differences(labels, a, b[::-1], ("auroc", "acc"), seeds_a=[0, 1, 2], seeds_b=[2, 1, 0], n_boot=200)
    in_order = arm_stats.seed_paired_difference(labels, a, b, "auroc", n_boot=200, paired=True)
    assert seeded["auroc"] == in_order and seeded["auroc"].paired
    want = arm_stats.paired_difference(labels, b, a, ("auroc",), n_boot=200)["auroc"]  # B minus A as well
    assert (fixed["auroc"].estimate, fixed["auroc"].low, fixed["auroc"].high) == pytest.approx((want.estimate, want.low, want.high), abs=1e-12)
    _, other = arm_stats.arm_differences(labels, a, b, ("auroc",), seeds_a=[0, 1, 2], seeds_b=[3, 4, 5], n_boot=200)
    assert not other["auroc"].paired and other["auroc"].high - other["auroc"].low > in_order.high - in_order.low


def test_seed_mean_difference_covers_runs_and_images_and_skips_undefined_values():
    """A per-image quantity (CAM mass in a lesion): B − A of the seed means, NaN images left out of each run's mean."""
    from covidnet.metrics.arm_stats import seed_mean_difference, verdict

    rng = np.random.default_rng(0)
    a = rng.normal(0.10, 0.02, (5, 40))
    b = rng.normal(0.15, 0.02, (5, 40))
    b[:, :4] = np.nan  # empty maps
    iv = seed_mean_difference(a, b, "mass_in_lesion", n_boot=400)
    assert iv.estimate == pytest.approx(np.nanmean(b, 1).mean() - a.mean(1).mean())
    assert iv.low < iv.estimate < iv.high and verdict(iv) == "better"
    # training randomness in the interval: runs that disagree widen it, though the image noise is the same
    shifted = b + np.array([[-0.06], [0.06], [-0.06], [0.06], [0.0]])
    assert seed_mean_difference(a, shifted, n_boot=400).high - seed_mean_difference(a, shifted, n_boot=400).low > iv.high - iv.low
    assert not seed_mean_difference(a[:2], b[:2], n_boot=400).judgeable  # two seeds: no interval
