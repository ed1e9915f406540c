"""report.json: the report's numbers in one machine-readable file, the one source of every table the docs quote.

``write_report`` writes it beside report.md, from the same scored sweep: per summary row the mean and std over seeds
of each test metric; every paired difference (in-split and on each external set) with its estimate, the interval
over seeds and images behind the verdict, the verdict, and the interval for these trained models; per external set
and row the mean and std of its slice and patient numbers; the settings shared by all jobs and those that differ;
the provenance (covidnet.report.provenance). ``scripts/studies/rebuild_results.py`` renders the marked tables of
README.md and docs/ from it, and tests/test_docs_tables.py fails when a marked table and its report.json disagree.

Numbers are stored unrounded (NaN as null); pages round them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from covidnet.metrics import arm_stats, stats
from covidnet.metrics import metric_registry as registry
from covidnet.core.atomic import write_text
from covidnet.trained.external_summary import collect as collect_external
from covidnet.trained.external_summary import group_row, paired
from covidnet.report.external import label as external_label
from covidnet.report.ensemble import ensemble_record
from covidnet.report.render import Context, common_settings
from covidnet.report.scoring import level_name, reference_pairs
from covidnet.report.provenance import PROVENANCE, settings_record

REPORT_JSON = "report.json"
FORMAT = 1
TEST_SET = "test"


def _num(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _interval(iv) -> list | None:
    if iv is None or getattr(iv, "judgeable", True) is False or iv.low is None:
        return None
    low, high = _num(iv.low), _num(iv.high)
    return None if low is None or high is None else [low, high]


def _why_none(iv) -> str | None:
    """Why an interval is missing, for the tables that quote it: too few units per class, too few seeds, or no
    resample that held both classes."""
    if _interval(iv) is not None:
        return None
    if getattr(iv, "note", None):
        return iv.note
    if getattr(iv, "judgeable", True) is False:
        return "not enough seeds to judge"
    return "no resample held both classes"


def _difference(metric: str, seeded: arm_stats.SeedInterval, fixed: stats.Interval, margins: dict) -> dict:
    out = {"estimate": _num(seeded.estimate), "seeds_and_images": _interval(seeded),
           "verdict": arm_stats.verdict(seeded, margins.get(metric)), "images_only": _interval(fixed)}
    why = {k: _why_none(iv) for k, iv in (("seeds_and_images", seeded), ("images_only", fixed)) if _why_none(iv)}
    return {**out, "no_interval": why} if why else out


def summary_record(ctx: Context) -> list[dict]:
    rows = []
    for row in ctx.summary:
        out = {"row": ", ".join(f"{f}={row[f]}" for f in ctx.sweep.factors) or "all runs",
               **{f: row[f] for f in ctx.sweep.factors}, "runs": row["runs"], "seeds": row["seeds"]}
        for m in (*registry.keys(), "best_epoch", "fit_seconds", "seconds_per_epoch"):
            if f"{m}_mean" in row:
                out[m] = [_num(row[f"{m}_mean"]), _num(row[f"{m}_std"])]
        rows.append(out)
    return rows


def comparison_record(ctx: Context) -> list[dict]:
    out = []
    for c in ctx.comparisons:
        out.append({"set": TEST_SET, "context": c.context, "arm": c.arm, "reference": c.reference, "runs": [c.n_arm, c.n_reference],
                    "paired_by_seed": c.paired, "n": c.n_images, "n_patients": None, "resampled": "images",
                    "metrics": {m: _difference(m, c.seed_diffs[m], c.diffs[m], c.margins) for m in c.seed_diffs}})
    return out


def external_record(ctx: Context) -> tuple[dict, list[dict]]:
    """Per external set its rows (mean, std over seeds) and the paired differences the report shows."""
    factors = ctx.sweep.factors
    grouped = ctx.group_runs()
    groups = {external_label(factors, key): runs for key, runs in grouped.items()}
    pairs = [(external_label(factors, key), external_label(factors, ref), key, ref) for _, key, ref in reference_pairs(ctx.sweep, grouped)]
    data = collect_external(groups)
    margins = ctx.options.get("margins") or {}
    sets, diffs = {}, []
    for name, by_group in data.items():
        first = next(iter(by_group.values())).metrics[0]
        sets[name] = {"kind": first.get("kind"), "n_images": first.get("n_images"), "n_patients": first.get("n_patients"),
                      "rows": {g: {"runs": len(s.metrics), **{k: [_num(m), _num(sd)] for k, (m, sd) in group_row(s).items()}}
                               for g, s in by_group.items()}}
        for arm, ref, key, ref_key in pairs:
            if arm not in by_group or ref not in by_group:
                continue
            fixed, seeded, n = paired(by_group[arm], by_group[ref], ctx.n_boot, ctx.seed)
            i = next(k for k, (a, b) in enumerate(zip(key, ref_key)) if a != b)
            some = next(iter(seeded.values()))
            diffs.append({"set": name, "context": ", ".join(f"{f}={v}" for j, (f, v) in enumerate(zip(factors, key)) if j != i) or "all runs",
                          "arm": level_name(factors[i], key[i]), "reference": level_name(factors[i], ref_key[i]),
                          "runs": [some.n_runs_b, some.n_runs_a], "paired_by_seed": some.paired, "n": n,
                          "n_patients": first.get("n_patients"), "resampled": "patients" if first.get("n_patients") else "images",
                          "metrics": {m: _difference(m, seeded[m], fixed[m], margins) for m in seeded}})
    return sets, diffs


def report_record(ctx: Context) -> dict:
    sets, external_diffs = external_record(ctx)
    return {
        "format": FORMAT,
        "report": ctx.sweep.name or ctx.sweep.path.name,
        "factors": list(ctx.sweep.factors),
        "settings": dict(common_settings(ctx.sweep.runs)),
        "settings_by_row": settings_record(ctx),
        "provenance": ctx.options.get(PROVENANCE) or {},
        "bootstrap": {"n_boot": ctx.n_boot, "seed": ctx.seed, "margins": ctx.options.get("margins") or {}},
        "summary": summary_record(ctx),
        "comparisons": comparison_record(ctx) + external_diffs,
        "external": sets,
        "ensembles": ensemble_record(ctx),
    }


def write_record(ctx: Context, folder: Path) -> Path:
    path = folder / REPORT_JSON
    write_text(path, json.dumps(report_record(ctx), indent=1, allow_nan=False) + "\n")
    return path


def read_record(folder: str | Path) -> dict:
    return json.loads((Path(folder) / REPORT_JSON).read_text())
