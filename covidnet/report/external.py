"""Report section: one column group per external set the sweep's runs were evaluated on (docs/external.md).

Reads each run's ``eval/<set>/`` (training with ``eval_sets``, or ``evaluate.py ... into_runs=true`` for an old
sweep) through covidnet.external_summary: per summary row, mean ± std over seeds; the same paired differences
as the in-split ones (each init against scratch, each other setting against its reference level, the other
factors held fixed), on the same external images, with the same two intervals and verdict.
"""

from __future__ import annotations

from covidnet.external_summary import external_lines
from covidnet.report.render import Context, Section
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
