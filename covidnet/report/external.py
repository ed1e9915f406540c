"""Report section: one column group per external set the sweep's runs were evaluated on (docs/external.md).

Reads each run's ``eval/<set>/`` (training with ``eval_sets``, or ``evaluate.py ... into_runs=true`` for an old
sweep) through covidnet.trained.external_summary: per summary row, mean ± std over seeds; the same paired differences
as the in-split ones (each init against scratch, each other setting against its reference level, the other
factors held fixed), on the same external images, with the same two intervals and verdict.
"""

from __future__ import annotations

from covidnet.trained.external_summary import external_lines
from covidnet.report.render import Context, Section, md_table
from covidnet.report.scoring import reference_pairs


def label(factors: list[str], key: tuple[str, ...]) -> str:
    return ",".join(f"{k}={v}" for k, v in zip(factors, key)) or "all runs"


def external_section(ctx: Context) -> Section | None:
    factors = ctx.sweep.factors
    grouped = ctx.group_runs()
    groups = {label(factors, key): runs for key, runs in grouped.items()}
    pairs = [(label(factors, key), label(factors, ref)) for _, key, ref in reference_pairs(ctx.sweep, grouped)]
    lines = external_lines(groups, pairs, ctx.n_boot, ctx.seed, ctx.options.get("margins"))
    return Section("External sets: the best checkpoints on other CT data", lines) if lines else None


def missing_evaluations(ctx: Context) -> list[tuple[str, str, str]]:
    """(job, set, what is wrong) for every complete job and every external set any job was evaluated on, where that
    job has no complete evaluation: interrupted (its eval/<set>/ lacks metrics.json) or never run."""
    runs = ctx.sweep.complete
    complete = {r.name: r.eval_names() for r in runs}
    interrupted = {r.name: set(r.incomplete_evals()) for r in runs}
    every = sorted(set().union(*complete.values(), *interrupted.values())) if runs else []
    out = []
    for r in runs:
        for name in every:
            if name in complete[r.name]:
                continue
            out.append((r.name, name, "incomplete: interrupted before its metrics.json was written" if name in interrupted[r.name]
                        else "missing: never evaluated"))
    return out


def missing_evaluations_section(ctx: Context) -> Section | None:
    """Every (job, set) pair without a complete evaluation, named: the tables above cover the complete ones only."""
    missing = missing_evaluations(ctx)
    if not missing:
        return None
    lines = md_table(["job", "set", "evaluation"], [list(m) for m in missing])
    lines += ["", f"{len(missing)} evaluation(s) are not in the external tables above. Run the same `evaluate.py ... into_runs=true` "
              "command again: it keeps the complete evaluations and does these."]
    return Section("Missing or incomplete evaluations on other sets", lines)
