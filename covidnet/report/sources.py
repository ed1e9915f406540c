"""Report section: each test source on its own (jobs trained with several sources, covidnet/data/multisource.py).

A job whose test split holds several sources writes ``test_by_source`` into metrics.json: COVID-CT per image,
and a source with patients per slice (patients resampled), per infected slice and per patient. This section
shows them side by side per group of the summary (mean ± std over seeds); the pooled numbers of the summary
mix the sources and are not a per-source result.
"""

from __future__ import annotations

import numpy as np

from covidnet.metrics import metric_registry as registry
from covidnet.report.render import Context, Section, md_table, pm

# (column, path in a source's block of test_by_source, metric) after the per-slice columns of levels()
OTHER_LEVELS = (
    ("infected-slice AUROC", ("infected_slices",), "auroc"),
    ("patient AUROC (mean P)", ("patients", "mean", "all"), "auroc"),
)


def levels() -> list[tuple[str, tuple[str, ...], str]]:
    """The columns: every metric of the registry's ``sources`` table per image (slice), then :data:`OTHER_LEVELS`."""
    return [(registry.get(m).header, ("images", "all"), m) for m in registry.shown_in("sources")] + list(OTHER_LEVELS)


def estimate(block: dict | None, path: tuple[str, ...], metric: str) -> float | None:
    for key in path:
        block = block.get(key) if isinstance(block, dict) else None
    iv = ((block or {}).get("metrics") or {}).get(metric)
    return None if iv is None or iv.get("estimate") is None else float(iv["estimate"])


def sources_section(ctx: Context) -> Section | None:
    groups = ctx.group_runs()
    sources = list(dict.fromkeys(s for runs in groups.values() for r in runs for s in (r.metrics.get("test_by_source") or {})))
    if not sources:
        return None
    factors = ctx.sweep.factors
    columns, table = levels(), []
    for key, runs in groups.items():
        for source in sources:
            row = list(key) + [source, str(sum(source in (r.metrics.get("test_by_source") or {}) for r in runs))]
            for _, path, metric in columns:
                values = [estimate((r.metrics.get("test_by_source") or {}).get(source), path, metric) for r in runs]
                values = [v for v in values if v is not None]
                row.append(pm(float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")) if values else "–")
            table.append(row)
    lines = md_table(factors + ["test source", "runs"] + [c for c, _, _ in columns], table) + [
        "",
        "Per test source (metrics.json `test_by_source`), mean ± std over seeds. COVID-CT: its official test split, per image. "
        "A source with patients: its held-out patients of the job's fold, per slice (slices keep their patient's label), "
        "COVID slices with a published infection finding vs all non-COVID slices, and per patient (mean slice P(COVID)); "
        "each job's intervals (patients resampled) are in its metrics.json. Threshold P(COVID) > 0.5.",
    ]
    return Section("Each test source on its own", lines)
