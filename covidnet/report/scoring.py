"""Scoring a sweep: per-run bootstrap intervals, seed means per group, and paired differences on the same test
images — each init against ``scratch``, each other swept setting against its reference level, the other factors
held fixed (the numbers behind summary.csv, runs.csv and report.md)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from covidnet.metrics import arm_stats, stats
from covidnet.metrics import metric_registry as registry
from covidnet.report.sweep import REFERENCE_INIT, ReportError, Run, Sweep

# metrics.json entries shown per run and averaged per group
RUN_FIELDS = ("best_epoch", "epochs_trained", "best_val_score", "fit_seconds")


def run_field(run: Run, name: str):
    """A metrics.json entry of RUN_FIELDS; a best score of an epoch the selection rule excludes (val/select's -1, a run
    where no epoch met the rule: metrics.json ``not_selectable``) is no score, never averaged with AUROCs."""
    value = run.metrics.get(name)
    return None if name == "best_val_score" and run.metrics.get("not_selectable") else value


def sort_value(v: str):
    try:
        return (0, float(v), "")
    except ValueError:
        return (1, 0.0, v)


def group_key(run: Run, keys: list[str]) -> tuple[str, ...]:
    return tuple(run.params.get(k, "") for k in keys)


def ordered_groups(runs: list[Run], keys: list[str]) -> dict[tuple[str, ...], list[Run]]:
    groups: dict[tuple[str, ...], list[Run]] = defaultdict(list)
    for r in runs:
        groups[group_key(r, keys)].append(r)

    def order(key: tuple[str, ...]):
        return tuple((0 if (k == "init" and v == REFERENCE_INIT) else 1, *sort_value(v)) for k, v in zip(keys, key))

    return {k: sorted(groups[k], key=lambda r: sort_value(r.seed)) for k in sorted(groups, key=order)}


def label(keys: list[str], values: tuple[str, ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values)) or "all runs"


def arrays(run: Run, keys: list[tuple[str, int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    keys = keys if keys is not None else sorted(run.predictions)
    return np.array([k[1] for k in keys]), np.array([run.predictions[k] for k in keys])


def score_runs(sweep: Sweep, n_boot: int, seed: int) -> None:
    """Point metrics and bootstrap intervals on each complete run's test predictions."""
    for r in sweep.complete:
        labels, probs = arrays(r)
        r.intervals = stats.bootstrap_metrics(labels, probs, n_boot, seed)
        r.points = {m: iv.estimate for m, iv in r.intervals.items()}


def summary_rows(sweep: Sweep) -> list[dict]:
    """One row per group of factor values: mean and std over the group's complete runs."""
    rows = []
    for key, runs in ordered_groups(sweep.runs, sweep.factors).items():
        done = [r for r in runs if r.ok]
        row: dict = dict(zip(sweep.factors, key))
        row["runs"] = len(done)
        row["not complete"] = len(runs) - len(done)
        row["seeds"] = " ".join(r.seed for r in done)
        for m in registry.keys():
            row[f"{m}_mean"], row[f"{m}_std"] = stats.mean_std([r.points[m] for r in done])
        for name in RUN_FIELDS:
            row[f"{name}_mean"], row[f"{name}_std"] = stats.mean_std([run_field(r, name) for r in done])
        row["seconds_per_epoch_mean"], row["seconds_per_epoch_std"] = stats.mean_std(
            [r.metrics["fit_seconds"] / r.metrics["epochs_trained"] for r in done if r.metrics.get("fit_seconds") and r.metrics.get("epochs_trained")])
        rows.append(row)
    return rows


MIN_RUNS = 3  # runs per arm below which no seed-aware interval is given (covidnet.metrics.arm_stats.seed_paired_difference)


@dataclass
class Comparison:
    """One level against its reference, arm minus reference, on the test images all their runs share.

    ``seed_diffs`` (test images and runs resampled, covidnet.metrics.arm_stats.seed_paired_difference) is the interval behind
    the verdict; ``diffs`` (test images only) holds the trained models fixed and is shown labelled "for these
    trained models". ``margins``: equivalence margins per metric, stated before the runs (none: no equivalence claim)."""

    context: str
    arm: str
    reference: str
    n_arm: int
    n_reference: int
    n_images: int
    n_dropped: int
    diffs: dict[str, stats.Interval]
    seed_diffs: dict[str, arm_stats.SeedInterval]
    margins: dict[str, float] = field(default_factory=dict)

    @property
    def paired(self) -> bool:
        return next(iter(self.seed_diffs.values())).paired

    def verdict(self, metric: str) -> str:
        return arm_stats.verdict(self.seed_diffs[metric], self.margins.get(metric))

    def sentence(self, metric: str) -> str:
        """What the comparison lets one say, in words: the seed-aware verdict, then the fixed-model interval."""
        si, iv = self.seed_diffs[metric], self.diffs[metric]
        name, verdict, margin = registry.words(metric), self.verdict(metric), self.margins.get(metric)
        head = f"{name}: {self.arm} minus {self.reference} = {si.estimate:+.3f}"
        if verdict == "not enough seeds to judge":
            claim = (f"not enough seeds to judge ({self.n_arm} / {self.n_reference} runs; a seed-aware interval needs at least "
                     f"{MIN_RUNS} per arm), so no claim about {self.arm} against {self.reference}.")
        elif si.note:
            claim = f"no interval ({si.note}), so no claim about {self.arm} against {self.reference}."
        elif si.low is None or not math.isfinite(si.low):
            claim = "no interval (the test resamples never held both classes)."
        else:
            span = f"95% CI over seeds and test images {si.low:+.3f} to {si.high:+.3f}"
            claim = {
                "better": f"{span}: {self.arm} is better than {self.reference} (the interval excludes zero).",
                "worse": f"{span}: {self.arm} is worse than {self.reference} (the interval excludes zero).",
                "equivalent": f"{span}: equivalent within the ±{margin} margin stated before the runs (both ends inside it).",
            }.get(verdict, f"{span}: not resolved (the interval includes zero" + (
                f" and leaves the ±{margin} equivalence margin)." if margin is not None else
                "; with no equivalence margin stated before the runs, this is no evidence of equality)."))
        fixed = ("" if iv.note else "no interval for these trained models." if not math.isfinite(iv.low) else
                 f"For these trained models (test images resampled only): {iv.low:+.3f} to {iv.high:+.3f}.")
        return f"{head}; {claim} {fixed}".rstrip()


def level_name(factor: str, value: str) -> str:
    """How a compared level is named: an init by itself (``imagenet``), any other factor as ``key=value``."""
    return value if factor == "init" else f"{factor}={value}"


def reference_pairs(sweep: Sweep, keys) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """(factor, arm key, reference key) for every group key (values of ``sweep.factors``) that differs from an
    existing group only in one factor, whose value there is that factor's reference level."""
    keys = list(keys)
    present = set(keys)
    pairs = []
    for i, factor in enumerate(sweep.factors):
        ref_value = sweep.references.get(factor)
        if ref_value is None:
            continue
        for key in keys:
            ref = key[:i] + (ref_value,) + key[i + 1 :]
            if key[i] != ref_value and ref in present:
                pairs.append((factor, key, ref))
    return pairs


def comparisons(sweep: Sweep, n_boot: int, seed: int, margins: dict[str, float] | None = None) -> list[Comparison]:
    """Each level of each factor against that factor's reference level (init: ``scratch``), the other factors
    held at the same values, on the test images all those runs share (``margins``: see ``Comparison``)."""
    groups = ordered_groups(sweep.complete, sweep.factors)
    out = []
    for factor, key, ref_key in reference_pairs(sweep, groups):
        i = sweep.factors.index(factor)
        others = [f for f in sweep.factors if f != factor]
        context = label(others, key[:i] + key[i + 1 :])
        arm, ref = groups[key], groups[ref_key]
        every = arm + ref
        common = sorted(set.intersection(*(set(r.predictions) for r in every)))
        union = set.union(*(set(r.predictions) for r in every))
        arm_name, ref_name = level_name(factor, key[i]), level_name(factor, ref_key[i])
        if not common:
            raise ReportError(f"Runs of {arm_name} and {ref_name} ({context}) share no test image.")
        labels = np.array([k[1] for k in common])
        a = np.stack([arrays(r, common)[1] for r in arm])
        b = np.stack([arrays(r, common)[1] for r in ref])
        diffs, seed_diffs = arm_stats.arm_differences(labels, b, a, registry.shown_in("comparison"), [r.seed for r in ref], [r.seed for r in arm], n_boot, seed,
                                                  min_runs=MIN_RUNS)
        out.append(Comparison(context, arm_name, ref_name, len(arm), len(ref), len(common), len(union) - len(common), diffs, seed_diffs,
                              dict(margins or {})))
    return out


def run_rows(sweep: Sweep) -> list[dict]:
    """One row per job (runs.csv), missing ones included: status, metrics with interval bounds, message."""
    rows = []
    for r in sweep.runs:
        row = {"job": r.name, **{k: r.params.get(k, "") for k in sweep.factors}, "seed": r.seed, "status": r.status}
        for m in registry.keys():
            iv = r.intervals.get(m)
            row[m], row[f"{m}_low"], row[f"{m}_high"] = (iv.estimate, iv.low, iv.high) if iv else (None, None, None)
        for name in RUN_FIELDS:
            row[name] = run_field(r, name)
        row["message"] = "; ".join(m for m in (r.message, r.metrics.get("not_selectable")) if m)
        rows.append(row)
    return rows

