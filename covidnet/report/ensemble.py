"""Seed ensembles: the runs of one report row scored as one model, P(COVID) averaged over its runs per image.

A user with five trained seeds of one setting gets the better model without new code: the ensemble's numbers come
from the predictions the runs already wrote (predictions_test.csv, eval/<set>/predictions.csv), so a report
rebuilt from its committed predictions has them too (averaged by covidnet.metrics.ensembles, as evaluate.py's
``ensemble=true`` averages its checkpoints). Each ensemble has an interval over test images (patients
where a set has them); the difference between two ensembles is paired on the same images, and its interval is
for these ensembles only (one ensemble per arm: training randomness is not resampled), so it backs no verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from covidnet.metrics import arm_stats, ensembles, stats
from covidnet.metrics import metric_registry as registry
from covidnet.trained.external_summary import SetRuns, collect
from covidnet.report.render import Context, Section, diff_ci, md_table, with_ci
from covidnet.report.scoring import label, reference_pairs
from covidnet.report.sweep import Run

MIN_RUNS = ensembles.MIN_MEMBERS  # an ensemble of one run is that run


def mean_probs(runs: list[Run]) -> tuple[list, np.ndarray, np.ndarray]:
    """Keys, labels and mean P(COVID) over ``runs`` of the test images every run predicted (the same split)."""
    keys, probs = ensembles.mean_probs([r.predictions for r in runs])
    return keys, np.array([k[1] for k in keys]), probs


def mean_set_probs(s: SetRuns) -> tuple[list[str], np.ndarray, np.ndarray, list | None]:
    """Paths, labels, mean P(COVID) and patients of one set's evaluations (covidnet.trained.external_summary.collect, which
    keeps apart evaluations of different versions of a set) over the images every run scored."""
    paths, probs = ensembles.mean_probs(s.predictions)
    patients = [s.patients.get(k) for k in paths]
    return paths, np.array([s.labels[k] for k in paths]), probs, (patients if all(patients) else None)


@dataclass
class Scored:
    """One ensemble on one set: the images (keys), their labels, the mean P(COVID), patients, and the metrics."""

    keys: list
    labels: np.ndarray
    probs: np.ndarray
    patients: list | None
    metrics: dict[str, stats.Interval]


def ensemble_numbers(ctx: Context) -> dict:
    """``{"sets": {set: {row: Scored}}, "n_runs": {row: n}, "diffs": [...]}`` for every row with >= MIN_RUNS runs
    (the test split is the set ``test``); computed once per report (the section and report.json share it)."""
    if "ensembles" in ctx.cache:
        return ctx.cache["ensembles"]
    factors = ctx.sweep.factors
    grouped = {label(factors, k): runs for k, runs in ctx.group_runs().items() if len(runs) >= MIN_RUNS}
    sets: dict[str, dict[str, Scored]] = {"test": {}}
    for row, runs in grouped.items():
        keys, labels, probs = mean_probs(runs)
        sets["test"][row] = Scored(keys, labels, probs, None, stats.bootstrap_metrics(labels, probs, ctx.n_boot, ctx.seed))
    for name, by_row in collect(grouped).items():
        for row, s in by_row.items():
            if len(s.predictions) == len(grouped[row]):  # every run of the row scored this version of the set
                paths, labels, probs, patients = mean_set_probs(s)
                metrics = stats.bootstrap_metrics(labels, probs, ctx.n_boot, ctx.seed, groups=patients)
                sets.setdefault(name, {})[row] = Scored(paths, labels, probs, patients, metrics)
    diffs = []
    for _, key, ref in reference_pairs(ctx.sweep, ctx.group_runs()):
        arm, base = label(factors, key), label(factors, ref)
        for name, by_row in sets.items():
            a, b = by_row.get(arm), by_row.get(base)
            common = sorted(set(a.keys) & set(b.keys)) if a is not None and b is not None else []
            if not common:
                continue
            ia, ib = ({k: i for i, k in enumerate(sc.keys)} for sc in (a, b))
            at, bt = [ia[k] for k in common], [ib[k] for k in common]  # paired on the images both scored
            groups = [a.patients[i] for i in at] if a.patients else None
            diff = arm_stats.paired_difference(a.labels[at], a.probs[at][None], b.probs[bt][None], registry.shown_in("ensemble"), ctx.n_boot, ctx.seed, groups=groups)
            diffs.append({"set": name, "arm": arm, "reference": base, "n": len(common), "metrics": diff})
    ctx.cache["ensembles"] = {"sets": {k: v for k, v in sets.items() if v}, "n_runs": {r: len(v) for r, v in grouped.items()}, "diffs": diffs}
    return ctx.cache["ensembles"]


def _cell(iv: stats.Interval, notes: set[str], fmt_interval) -> str:
    """A table cell: the interval, or the estimate alone with its reason collected once below the table."""
    if iv.note:
        notes.add(iv.note)
        return f"{iv.estimate:+.3f}" if fmt_interval is diff_ci else f"{iv.estimate:.3f}"
    return fmt_interval(iv)


def defined_metrics(labels_present: set[int]) -> list[str]:
    """The ensemble metrics a set's labels define (the registry's ``needs_classes``: AUROC needs both classes,
    sensitivity COVID, specificity non-COVID)."""
    return [m for m in registry.shown_in("ensemble") if registry.defined(m, labels_present)]


def ensemble_section(ctx: Context) -> Section | None:
    numbers = ensemble_numbers(ctx)
    if not numbers["sets"]:
        return None
    lines: list[str] = []
    for where, rows in numbers["sets"].items():
        notes: set[str] = set()
        present = set().union(*(set(sc.labels.tolist()) for sc in rows.values()))
        shown = [m for m in defined_metrics(present) if all(np.isfinite(sc.metrics[m].estimate) for sc in rows.values())]
        lines += [f"**{'test split' if where == 'test' else where}**", ""]
        lines += md_table(["row", "runs averaged", *(m if m != "acc" else "accuracy" for m in shown)],
                          [[row, str(numbers["n_runs"][row]), *(_cell(sc.metrics[m], notes, with_ci) for m in shown)] for row, sc in rows.items()])
        lines.append("")
        for d in (d for d in numbers["diffs"] if d["set"] == where):
            cells = ", ".join(f"{m} {_cell(d['metrics'][m], notes, diff_ci)}" for m in shown)
            lines += [f"- {d['arm']} minus {d['reference']}, on the {d['n']} images both scored: {cells}", ""]
        lines += [f"No interval: {note.removeprefix('n/a: ')}." for note in sorted(notes)] + ([""] if notes else [])
    lines.append("Each row's runs scored as one model: P(COVID) averaged over its seeds per image, then the metrics (COVID "
                 "call at > 0.5) with a 95 % bootstrap interval over images (patients where the set has them). A difference "
                 "of two ensembles is paired on the same images; its interval is for these ensembles and does not resample "
                 "training (one ensemble per arm), so it backs no better/worse verdict: that is the per-seed comparison's.")
    return Section("Seed ensembles: each row's runs as one model", lines)


def ensemble_record(ctx: Context) -> dict:
    """report.json's ``ensembles``: every ensemble row's metrics with intervals, per set, and their differences."""
    def iv(i: stats.Interval) -> dict:  # NaN (a metric one class cannot have, e.g. AUROC of an all-COVID set) -> null
        return {"estimate": i.estimate if np.isfinite(i.estimate) else None, "low": None if i.note or not np.isfinite(i.low) else i.low,
                "high": None if i.note or not np.isfinite(i.high) else i.high, "note": i.note or None}

    numbers = ensemble_numbers(ctx)
    sets = {where: {row: {m: iv(sc.metrics[m]) for m in registry.shown_in("ensemble")} for row, sc in rows.items()} for where, rows in numbers["sets"].items()}
    diffs = [{**d, "metrics": {m: iv(d["metrics"][m]) for m in registry.shown_in("ensemble")}} for d in numbers["diffs"]]
    return {"n_runs": numbers["n_runs"], "sets": sets, "differences": diffs} if numbers["sets"] else {}
