"""Seed ensembles: the runs of one report row scored as one model, P(COVID) averaged over its runs per image.

A user with five trained seeds of one setting gets the better model without new code: the ensemble's numbers come
from the predictions the runs already wrote (predictions_test.csv, eval/<set>/predictions.csv), so a report
rebuilt from its committed predictions has them too. Each ensemble has an interval over test images (patients
where a set has them); the difference between two ensembles is paired on the same images, and its interval is
for these ensembles only (one ensemble per arm: training randomness is not resampled), so it backs no verdict.
"""

from __future__ import annotations

import numpy as np

from covidnet import arm_stats, stats
from covidnet.report.render import Context, Section, diff_ci, md_table, with_ci
from covidnet.report.scoring import label, reference_pairs
from covidnet.report.sweep import Run

MIN_RUNS = 2  # an ensemble of one run is that run
METRICS = ("auroc", "acc", "sensitivity", "specificity")


def mean_probs(runs: list[Run]) -> tuple[list, np.ndarray, np.ndarray]:
    """Keys, labels and mean P(COVID) over ``runs`` of the test images every run predicted (the same split)."""
    keys = sorted(set.intersection(*(set(r.predictions) for r in runs)))
    probs = np.mean([[r.predictions[k] for k in keys] for r in runs], axis=0)
    return keys, np.array([k[1] for k in keys]), probs


def mean_eval_probs(runs: list[Run], name: str) -> tuple[list[str], np.ndarray, np.ndarray, list | None] | None:
    """Paths, labels, mean P(COVID) and patients of set ``name`` over ``runs`` (None: a run lacks the set)."""
    tables = []
    for r in runs:
        results = r.eval_results()
        if name not in results:
            return None
        tables.append({row["path"]: row for row in results[name][1]})
    paths = sorted(set.intersection(*(set(t) for t in tables)))
    first = tables[0]
    labels = np.array([int(first[p]["label"]) for p in paths])
    probs = np.mean([[float(t[p]["prob_covid"]) for p in paths] for t in tables], axis=0)
    patients = [first[p].get("patient") or None for p in paths]
    return paths, labels, probs, (patients if all(patients) else None)


def ensemble_numbers(ctx: Context) -> dict:
    """``{"test": {row: {metric: Interval}}, "<set>": {...}, "diffs": [...]}`` for every row with >= MIN_RUNS runs."""
    factors = ctx.sweep.factors
    grouped = {key: runs for key, runs in ctx.group_runs().items() if len(runs) >= MIN_RUNS}
    out: dict = {"test": {}, "n_runs": {label(factors, k): len(v) for k, v in grouped.items()}, "diffs": [], "labels": {}}
    arrays: dict = {}
    for key, runs in grouped.items():
        _, labels, probs = mean_probs(runs)
        out["test"][label(factors, key)] = stats.bootstrap_metrics(labels, probs, ctx.n_boot, ctx.seed)
        arrays[("test", key)] = (labels, probs, None)
        out["labels"]["test"] = set(labels.tolist())
        names = set.intersection(*(set(r.eval_results()) for r in runs))
        for name in sorted(names):
            got = mean_eval_probs(runs, name)
            if got is None:
                continue
            _, labels, probs, patients = got
            out.setdefault(name, {})[label(factors, key)] = stats.bootstrap_metrics(labels, probs, ctx.n_boot, ctx.seed, groups=patients)
            arrays[(name, key)] = (labels, probs, patients)
            out["labels"][name] = set(labels.tolist())
    for _, key, ref in reference_pairs(ctx.sweep, grouped):
        for where in ["test", *sorted(k for k in out if k not in ("test", "n_runs", "diffs", "labels"))]:
            if (where, key) not in arrays or (where, ref) not in arrays:
                continue
            labels, probs, patients = arrays[(where, key)]
            ref_labels, ref_probs, _ = arrays[(where, ref)]
            if len(labels) != len(ref_labels) or not np.array_equal(labels, ref_labels):
                continue  # not the same images: no paired difference
            diff = arm_stats.paired_difference(labels, probs[None], ref_probs[None], METRICS, ctx.n_boot, ctx.seed, groups=patients)
            out["diffs"].append({"set": where, "arm": label(factors, key), "reference": label(factors, ref), "metrics": diff})
    return out


def _cell(iv: stats.Interval, notes: set[str], fmt_interval) -> str:
    """A table cell: the interval, or the estimate alone with its reason collected once below the table."""
    if iv.note:
        notes.add(iv.note)
        return f"{iv.estimate:+.3f}" if fmt_interval is diff_ci else f"{iv.estimate:.3f}"
    return fmt_interval(iv)


def defined_metrics(labels_present: set[int]) -> list[str]:
    """The metrics a set's labels define: AUROC needs both classes, sensitivity COVID, specificity non-COVID."""
    need = {"auroc": {0, 1}, "acc": set(), "sensitivity": {1}, "specificity": {0}}
    return [m for m in METRICS if need[m] <= labels_present]


def ensemble_section(ctx: Context) -> Section | None:
    numbers = ensemble_numbers(ctx)
    if not numbers["test"]:
        return None
    lines: list[str] = []
    for where in ["test", *sorted(k for k in numbers if k not in ("test", "n_runs", "diffs", "labels"))]:
        rows, notes = numbers[where], set()
        shown = [m for m in METRICS if all(np.isfinite(ivs[m].estimate) for ivs in rows.values())]
        shown = [m for m in shown if m in defined_metrics(numbers["labels"][where])]
        lines += [f"**{'test split' if where == 'test' else where}**", ""]
        lines += md_table(["row", "runs averaged", *(m if m != "acc" else "accuracy" for m in shown)],
                          [[row, str(numbers["n_runs"][row]), *(_cell(ivs[m], notes, with_ci) for m in shown)] for row, ivs in rows.items()])
        lines.append("")
        for d in (d for d in numbers["diffs"] if d["set"] == where):
            cells = ", ".join(f"{m} {_cell(d['metrics'][m], notes, diff_ci)}" for m in shown)
            lines += [f"- {d['arm']} minus {d['reference']}: {cells}", ""]
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
    sets = {where: {row: {m: iv(ivs[m]) for m in METRICS} for row, ivs in rows.items()}
            for where, rows in numbers.items() if where not in ("n_runs", "diffs", "labels")}
    diffs = [{**d, "metrics": {m: iv(d["metrics"][m]) for m in METRICS}} for d in numbers["diffs"]]
    return {"n_runs": numbers["n_runs"], "sets": sets, "differences": diffs} if numbers["test"] else {}
