"""The sections of report.md, in order, and how to add one.

A section builder is a function ``builder(ctx: Context) -> Section | None`` (types in
covidnet.report.render). It reads the scored sweep (``ctx.sweep``: runs with their predictions,
metrics and run directories; ``ctx.group_runs()``: complete runs per summary row), may add columns to
``ctx.summary`` (summary.csv, one dict per row, in ``ctx.group_runs()`` order) and ``ctx.runs``
(runs.csv, one dict per job, key ``job``), and returns its markdown, or None to leave the report as it is.

To add a column group (external evaluation sets, CAM mass in the lungs, per-source metrics, ...):

1. write the builder in its own module under covidnet/report/ (e.g. ``external.py``), importing only
   ``Context``, ``Section``, the formatting helpers of render.py and the scoring helpers it needs; read a
   run's extra files through ``run.run_dir`` (covidnet.rundirs.runs.RunDir: ``eval_sets()``, ``read_eval()``);
2. add it to :data:`SECTIONS` below, where its section should appear;
3. test it on a hand-made sweep (tests/test_report.py's ``fake_job`` writes job directories).

Builders run in the order of :data:`SECTIONS`; a builder that raises costs its own section only (the
report says so in its place), never the rest of the report.
"""

from __future__ import annotations

from collections.abc import Callable

from covidnet.metrics import metric_registry as registry
from covidnet.report.cam import cam_section
from covidnet.report.ensemble import ensemble_section
from covidnet.report.external import external_section, missing_evaluations_section
from covidnet.report.figures import figures_section
from covidnet.report.provenance import provenance_section
from covidnet.report.render import Context, Section, diff_ci, fmt, md_table, pm, with_ci
from covidnet.report.scoring import MIN_RUNS, group_key, sort_value
from covidnet.report.sources import sources_section
from covidnet.report.sweep import REFERENCE_INIT

SectionBuilder = Callable[[Context], "Section | None"]


def summary_section(ctx: Context) -> Section:
    factors = ctx.sweep.factors
    header = factors + ["runs", *(registry.get(m).header for m in registry.keys()), "best val epoch", "epochs", "fit time (s)", "s / epoch"]
    table = []
    for row in ctx.summary:
        table.append(
            [row[k] for k in factors]
            + [f"{row['runs']}" + (f" (+{row['not complete']} not complete)" if row["not complete"] else "")]
            + [pm(row[f"{m}_mean"], row[f"{m}_std"]) for m in registry.keys()]
            + [pm(row["best_epoch_mean"], row["best_epoch_std"], 1), pm(row["epochs_trained_mean"], row["epochs_trained_std"], 1),
               pm(row["fit_seconds_mean"], row["fit_seconds_std"], 0), pm(row["seconds_per_epoch_mean"], row["seconds_per_epoch_std"], 1)]
        )
    lines = md_table(header, table) + [
        "",
        "Test metrics are recomputed from each run's predictions_test.csv (COVID positive, P(COVID) > 0.5); std is the sample "
        "standard deviation over seeds (– for a single run). The best validation epoch is 0-based (the checkpoint tested). "
        "Fit time is the wall time of training and validation on the machine that ran the job (trainer settings above).",
    ]
    return Section("Summary: mean ± std over seeds", lines)


def comparison_section(ctx: Context) -> Section:
    comps, sweep = ctx.comparisons, ctx.sweep
    title = "Paired differences on the same test images"
    if not comps:
        inits = sorted({r.init for r in sweep.complete})
        swept = sorted({r.init for r in sweep.runs})
        why = f"no complete {REFERENCE_INIT} run" if REFERENCE_INIT not in inits else "no other init with a complete run"
        hint = "see the failed jobs below" if len(swept) > 1 else f"sweep `init={REFERENCE_INIT},imagenet` to compare"
        if len(sweep.factors) > 1:
            why, hint = "no two rows differ in one factor only, with one of them at that factor's reference level", "see the failed jobs below"
        return Section(title, [f"No comparison: {why} (inits with complete runs: {', '.join(inits) or 'none'}; in the sweep: {', '.join(swept)}); {hint}."])
    compared = registry.shown_in("comparison")
    refs = ", ".join(f"{k}: {v}" for k, v in sweep.references.items() if k in sweep.factors)
    margins = ", ".join(f"{registry.words(m)} ±{v}" for m, v in comps[0].margins.items()) or "none stated, so no equivalence is claimed"
    intro = [f"Each init against {REFERENCE_INIT}, and each other swept setting against its reference level (the first value "
             f"the sweep lists), the other factors held fixed. References: {refs}. Equivalence margins: {margins}.", ""]
    table = []
    for c in comps:
        row = [c.context, f"{c.arm} − {c.reference}", f"{c.n_arm} / {c.n_reference}", "yes" if c.paired else "no",
               f"{c.n_images}" + (f" ({c.n_dropped} not in every run, left out)" if c.n_dropped else "")]
        for m in compared:
            row += [diff_ci(c.seed_diffs[m]), c.verdict(m), diff_ci(c.diffs[m])]
        table.append(row)
    header = ["other factors", "difference", "runs (arm / ref)", "paired by seed", "test images"]
    for m in compared:
        name = "Δ " + registry.words(m)
        header += [f"{name} [95% CI over seeds and images]", "verdict", f"{name} for these trained models [95% CI]"]
    lines = intro + md_table(header, table) + [""]
    for c in comps:
        prefix = f"{c.context}: " if len(comps) > 1 else ""
        lines += [f"- {prefix}{c.sentence(m)}" for m in compared]
    lines += [
        "",
        f"How: test images are paired by file name. The interval behind the verdict covers both sources of chance: on each of "
        f"{ctx.n_boot} draws (seed {ctx.seed}) the runs of each arm are resampled with replacement (the same seeds for both arms "
        "when both ran the same seeds: paired by seed) and so are the test images; each drawn run's metric is computed on "
        "the drawn images and averaged per arm, and the averages are subtracted. Better / worse: the interval excludes 0; "
        "equivalent: both ends inside a margin stated before the runs; an arm with fewer than "
        f"{MIN_RUNS} runs gets no such interval (not enough seeds to judge). The estimate is the difference of the seed means "
        "in the summary. The interval for these trained models resamples the test images only: it says how well these "
        "particular models were measured, not whether retraining with other seeds would give the same answer.",
    ]
    return Section(title, lines)


def runs_section(ctx: Context) -> Section:
    factors, done = ctx.sweep.factors, ctx.sweep.complete
    header = ["job"] + list(factors) + ["seed", *(registry.get(m).header for m in registry.keys()), "best epoch", "fit s"]
    table = []
    for r in sorted(done, key=lambda r: (group_key(r, factors), sort_value(r.seed))):
        table.append([r.name] + [r.params[k] for k in factors] + [r.seed] + [with_ci(r.intervals[m]) for m in registry.keys()]
                     + [fmt(r.metrics.get("best_epoch")), fmt(r.metrics.get("fit_seconds"), 0)])
    lines = md_table(header, table) if table else ["No complete run."]
    undefined = sum(r.intervals["auroc"].n_undefined for r in done)
    if undefined:
        lines += ["", f"{undefined} resamples held one class only and have no AUROC; they are left out of the AUROC intervals."]
    return Section(f"Runs, with 95% bootstrap intervals over test images ({ctx.n_boot} resamples, seed {ctx.seed})", lines)


def problems_section(ctx: Context) -> Section:
    problems = ctx.sweep.problems
    if not problems:
        lines = ["None: every job expected by the sweep wrote its metrics and test predictions."]
    else:
        short = [r.message if len(r.message) <= 400 else r.message[:400] + " …" for r in problems]
        lines = md_table(["job", "status", "message"], [[r.name, r.status, m] for r, m in zip(problems, short)])
        lines += ["", "These jobs are not in the summary or the comparisons."]
    return Section("Failed, interrupted or missing jobs", lines)


# The report's sections, in the order they appear in report.md (see the module docstring to add one).
SECTIONS: list[SectionBuilder] = [
    provenance_section,
    summary_section,
    sources_section,
    external_section,
    missing_evaluations_section,
    comparison_section,
    ensemble_section,
    runs_section,
    problems_section,
    figures_section,
    cam_section,
]


def build_sections(ctx: Context, builders: list[SectionBuilder] | None = None) -> list[Section]:
    """Run every builder; one that raises is reported in its place instead of costing the whole report."""
    out = []
    for builder in SECTIONS if builders is None else builders:
        try:
            section = builder(ctx)
        except Exception as err:  # noqa: BLE001 - one optional part must not cost the rest of the report
            name = builder.__name__.removesuffix("_section").replace("_", " ")
            section = Section(name.capitalize(), [f"Not written: {type(err).__name__}: {err}"])
        if section is not None:
            out.append(section)
    return out
