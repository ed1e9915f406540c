"""External-set columns of a sweep: runs' ``<run dir>/eval/<set>/`` results summarised per group of runs.

Read by the sweep report (one column group per set) and usable on its own. Each run's evaluation holds
``metrics.json`` and ``predictions.csv`` (written by evaluate.py with ``into_runs=true`` or by training with
``eval_sets``). Per group (e.g. an init) and set: mean ± std over the runs (seeds) of slice-level AUROC,
accuracy, sensitivity, specificity (covidnet.metrics.metric_registry's ``external`` metrics) and mean P(COVID), and
patient-level AUROC (mean slice probability);
per other group, the paired difference against the reference group on the same external images: the 95 %
interval over seeds and images (patients where the set has them) behind the verdict, and the one for these trained
models (images or patients only), both from covidnet.metrics.stats.

A run is a run directory, or any object with ``seed`` and ``eval_results()`` (``{set: (metrics.json, prediction
rows)}``), such as a run of a report rebuilt from its committed predictions (covidnet.report.bundle).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covidnet.metrics import arm_stats, stats
from covidnet.metrics import metric_registry as registry
from covidnet.rundirs.runs import RunDir


@dataclass
class SetRuns:
    """One set's evaluations of the runs of one group."""

    metrics: list[dict] = field(default_factory=list)
    predictions: list[dict[str, float]] = field(default_factory=list)  # path -> P(COVID), one per run
    labels: dict[str, int] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)
    seeds: list = field(default_factory=list)  # one per run (None where unknown)


def evals_and_seed(run) -> tuple[dict[str, tuple[dict, list[dict]]], object]:
    """``({set: (metrics.json, prediction rows)}, seed)`` of a run directory or of a run object (module docstring)."""
    if isinstance(run, (str, Path)):
        rd = RunDir(run)
        return {name: rd.read_eval(name) for name in rd.eval_sets()}, (rd.read_metrics() or {}).get("seed")
    return run.eval_results(), run.seed


def identity(metrics: dict) -> str:
    """What an evaluation scored: the set's kind, root, read options and image count (and the training patients
    left out), from its metrics.json. Evaluations that differ in any of these are different sets, never pooled."""
    definition = metrics.get("set_definition") or {}
    excluded = metrics.get("training_patients_excluded") or {}
    return json.dumps({"kind": metrics.get("kind"), "root": definition.get("root", metrics.get("root")), "read": definition.get("read"),
                       "n_images": metrics.get("n_images"), "excluded": excluded.get("patients")}, sort_keys=True)


def describe(metrics: dict) -> str:
    definition = metrics.get("set_definition") or {}
    read = definition.get("read")
    excluded = metrics.get("training_patients_excluded")
    return (f"{metrics.get('n_images')} images at {definition.get('root', metrics.get('root'))}"
            + (f", read {json.dumps(read, sort_keys=True)}" if read else "")
            + (f", without the {len(excluded['patients'])} training patients of fold {excluded['fold']}" if excluded else ""))


def collect(groups: dict[str, list]) -> dict[str, dict[str, SetRuns]]:
    """``{set: {group: SetRuns}}`` for every set any run of ``groups`` was evaluated on. A set name evaluated in
    different versions (another copy or root, other read options, another image count) becomes one entry per
    version, labelled with what it holds: their results are never averaged or paired together."""
    found: list[tuple[str, str, str, dict, list[dict], object]] = []
    for group, runs in groups.items():
        for run in runs:
            evals, seed = evals_and_seed(run)
            for name, (metrics, rows) in evals.items():
                found.append((name, identity(metrics), group, metrics, rows, seed))
    versions: dict[str, list[str]] = {}
    for name, ident, *_ in found:
        if ident not in versions.setdefault(name, []):
            versions[name].append(ident)
    out: dict[str, dict[str, SetRuns]] = {}
    for name, ident, group, metrics, rows, seed in found:
        k = versions[name].index(ident)
        label = name if len(versions[name]) == 1 else f"{name}, version {k + 1} of {len(versions[name])}: {describe(metrics)}"
        s = out.setdefault(label, {}).setdefault(group, SetRuns())
        s.metrics.append(metrics)
        s.seeds.append(seed)
        s.predictions.append({r["path"]: float(r["prob_covid"]) for r in rows})
        s.labels.update({r["path"]: int(r["label"]) for r in rows})
        s.patients.update({r["path"]: r["patient"] for r in rows if r.get("patient")})
    return out


def estimate(block: dict | None, metric: str) -> float:
    """One metric's point estimate from an evaluation block (``{'metrics': {...}, 'mean_prob_covid': ...}``); NaN if absent."""
    iv = (block or {}).get("metrics", {}).get(metric) if metric != "mean_prob_covid" else (block or {}).get("mean_prob_covid")
    return float("nan") if not iv or iv.get("estimate") is None else float(iv["estimate"])


def group_row(s: SetRuns) -> dict[str, tuple[float, float]]:
    """mean ± std over runs of the set's headline numbers."""
    row = {}
    for m in (*registry.shown_in("external"), "mean_prob_covid"):
        row[f"slice {m}"] = stats.mean_std([estimate(x["images"]["all"], m) for x in s.metrics])
    if all("patients" in x for x in s.metrics):
        row["patient auroc"] = stats.mean_std([estimate(x["patients"]["mean"]["all"], "auroc") for x in s.metrics])
    return row


def paired(arm: SetRuns, ref: SetRuns, n_boot: int, seed: int
           ) -> tuple[dict[str, stats.Interval], dict[str, arm_stats.SeedInterval], int]:
    """Arm minus reference on the images every run of both has (the registry's ``external_differences`` metrics:
    AUROC, accuracy, sensitivity; on a one-class set, a COVID-only one, those that need COVID images only, as accuracy
    would repeat sensitivity there): the interval for these trained models and the one over seeds (paired by seed
    where both ran the same seeds) and images."""
    keys = sorted(set.intersection(*(set(p) for p in arm.predictions + ref.predictions)))
    labels = np.asarray([ref.labels[k] for k in keys])
    a = np.asarray([[p[k] for k in keys] for p in arm.predictions])
    b = np.asarray([[p[k] for k in keys] for p in ref.predictions])
    groups = [ref.patients[k] for k in keys] if all(k in ref.patients for k in keys) else None
    shown = registry.shown_in("external_differences")
    metrics = shown if len(set(labels.tolist())) > 1 else tuple(m for m in shown if registry.get(m).needs_classes == {1})
    known = None not in arm.seeds + ref.seeds
    fixed, seeded = arm_stats.arm_differences(labels, b, a, metrics, ref.seeds if known else None, arm.seeds if known else None,
                                          n_boot, seed, groups=groups)
    return fixed, seeded, len(keys)


def difference_line(arm: str, ref: str, n: int, unit: str, fixed: dict[str, stats.Interval], seeded: dict[str, arm_stats.SeedInterval],
                    margins: dict[str, float]) -> list[str]:
    """One pair: per metric the seed-aware interval with its verdict, then the one for these trained models."""
    some = next(iter(seeded.values()))
    runs = f"{some.n_runs_b} / {some.n_runs_a} runs, " + ("paired by seed" if some.paired else "not paired by seed")
    lines = [f"- {arm} − {ref} on the same {n} images ({unit} resampled), {runs}:"]
    for m, si in seeded.items():
        seeds = f" {si.text} over seeds and {unit}" if si.judgeable else f" {si.estimate:+.3f}"
        lines.append(f"  - Δ {m}{seeds}: {arm_stats.verdict(si, margins.get(m))}; for these trained models {stats.signed(fixed[m])}")
    return lines


def external_lines(groups: dict[str, list], pairs: list[tuple[str, str]] | str | None, n_boot: int = stats.DEFAULT_BOOT,
                   seed: int = stats.DEFAULT_SEED, margins: dict[str, float] | None = None) -> list[str]:
    """Markdown: one table per external set (groups as rows), then the paired difference of each ``(arm, reference)``
    pair of group labels (a single label: every other group against it). ``margins``: equivalence margins per metric
    stated before the runs (none: no "equivalent" verdict)."""
    if isinstance(pairs, str):
        pairs = [(g, pairs) for g in groups if g != pairs]
    data = collect(groups)
    if not data:
        return []
    lines: list[str] = []
    for name, by_group in data.items():
        first = next(iter(by_group.values())).metrics[0]
        unit = f"{first['n_images']} images" + (f" of {first['n_patients']} patients" if first.get("n_patients") else "")
        lines += [f"### {name} ({first.get('kind')}, {unit})", ""]
        columns = list(group_row(next(iter(by_group.values()))))
        lines.append("| group | runs | " + " | ".join(columns) + " |")
        lines.append("|---" * (len(columns) + 2) + "|")
        for group, s in by_group.items():
            row = group_row(s)
            cells = [("-" if np.isnan(m) else f"{m:.3f}" + ("" if np.isnan(sd) else f" ± {sd:.3f}")) for m, sd in (row.get(c, (np.nan, np.nan)) for c in columns)]
            lines.append(f"| {group} | {len(s.metrics)} | " + " | ".join(cells) + " |")
        lines.append("")
        shown = [(arm, ref) for arm, ref in pairs or [] if arm in by_group and ref in by_group]
        for arm, ref in shown:
            fixed, seeded, n = paired(by_group[arm], by_group[ref], n_boot, seed)
            lines += difference_line(arm, ref, n, "patients" if first.get("n_patients") else "images", fixed, seeded, margins or {})
        if shown:
            lines.append("")
    lines.append("Slice numbers: P(COVID) > 0.5 is a COVID call; ± is the std over runs (seeds). Patient AUROC: each patient's "
                 "mean slice P(COVID). Differences: arm − reference on the same images, 95 % bootstrap. The interval over seeds "
                 "and images (or patients) resamples the runs of each arm too and is the one behind the verdict (better / worse: "
                 "excludes 0; equivalent: inside a margin stated before the runs; fewer than 3 runs in an arm: not enough seeds "
                 "to judge). The one for these trained models resamples images (or patients) only. See docs/external.md.")
    return lines


def sweep_groups(sweep_dir: Path) -> tuple[dict[str, list[Path]], list[tuple[str, str]]]:
    """Job directories of a sweep grouped by their name without ``seed=``; each init paired with scratch."""
    groups: dict[str, list[Path]] = {}
    for job in sorted(p for p in Path(sweep_dir).iterdir() if RunDir(p).metrics_path.is_file()):
        label = ",".join(part for part in job.name.split(",") if not part.startswith("seed=")) or "all runs"
        groups.setdefault(label, []).append(job)
    pairs = []
    for label in groups:
        for part in label.split(","):
            if part.startswith("init=") and part != "init=scratch":
                ref = ",".join("init=scratch" if x == part else x for x in label.split(","))
                if ref in groups:
                    pairs.append((label, ref))
    return groups, pairs


def margin_arg(text: str) -> tuple[str, float]:
    """``auroc=0.05`` -> ("auroc", 0.05): a command-line equivalence margin."""
    import argparse

    metric, sep, value = text.partition("=")
    if not sep or metric not in registry.keys():
        raise argparse.ArgumentTypeError(f"expected METRIC=VALUE with METRIC one of {', '.join(registry.keys())}, not {text!r}")
    try:
        return metric, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"margin {value!r} is not a number") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m covidnet.trained.external_summary <sweep dir>``: the external-set tables of a sweep, on stdout."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--n-boot", type=int, default=stats.DEFAULT_BOOT)
    parser.add_argument("--margin", action="append", default=[], metavar="METRIC=VALUE", type=margin_arg,
                        help="equivalence margin stated before the runs, e.g. auroc=0.05 (repeatable)")
    args = parser.parse_args(argv)
    groups, pairs = sweep_groups(args.sweep_dir)
    lines = external_lines(groups, pairs, args.n_boot, margins=dict(args.margin))
    if not lines:
        print(f"No run of {args.sweep_dir} has an eval/<set>/ result: run training with eval_sets=[...], or "
              f"python evaluate.py ckpt={args.sweep_dir} eval=... into_runs=true.")
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
