"""Markdown of a sweep report: the section types every part of the report fills, number formatting, the
header, and the assembly of report.md from its sections (see covidnet.report.sections)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone

from covidnet.metrics import arm_stats, stats
from covidnet.report.scoring import Comparison, ordered_groups
from covidnet.report.sweep import Run, Sweep, dig

# Settings shown at the top of the report when every job has them (the values each job's config gives them).
SETTING_KEYS = (
    "data.root", "data.image_size", "data.batch_size", "data.fraction", "data.normalization", "model.arch", "model.freeze",
    "model.backbone_lr_scale", "model.optimizer.lr", "trainer.max_epochs", "trainer.accelerator", "trainer.precision",
    "model.label_smoothing", "callbacks.ema",
)
NOT_RECORDED = object()  # a setting a job's config lacks (an older job), told apart from null


def setting_text(value) -> str:
    """A setting as a config writes it: ``null``, ``true``; an object Hydra instantiates as its class and arguments
    (``EMA(decay=0.98)``), since its ``_target_`` path says less than the arguments; other containers as JSON;
    ``not recorded`` for a key the job's config lacks (an older job)."""
    if value is NOT_RECORDED:
        return "not recorded"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict) and "_target_" in value:
        args = ", ".join(f"{k}={setting_text(v)}" for k, v in value.items() if not k.startswith("_"))
        return f"{str(value['_target_']).rsplit('.', 1)[-1]}({args})"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


@dataclass
class Context:
    """What a section builder gets: the scored sweep and the rows of summary.csv and runs.csv.

    ``summary`` holds one dict per group (keys: the factors, then metrics) and ``runs`` one per job (key
    ``job`` = ``Run.name``); a builder may add columns to them (the same keys in every row), which then
    appear in summary.csv / runs.csv. ``options`` carries the command-line choices (``cam``, ``cam_overrides``)."""

    sweep: Sweep
    summary: list[dict]
    runs: list[dict]
    comparisons: list[Comparison]
    n_boot: int
    seed: int
    options: dict = field(default_factory=dict)
    # numbers a section computes and report.json records too (e.g. the seed ensembles), computed once
    cache: dict = field(default_factory=dict)

    def group_runs(self, keys: list[str] | None = None) -> dict[tuple[str, ...], list[Run]]:
        """Complete runs per group of factor values (default: the summary's rows), in report order."""
        return ordered_groups(self.sweep.complete, self.sweep.factors if keys is None else keys)


@dataclass
class Section:
    """One ``## title`` section of report.md: its markdown lines."""

    title: str
    lines: list[str]


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def pm(mean: float, std: float, digits: int = 3) -> str:
    return fmt(mean, digits) + (f" ± {fmt(std, digits)}" if math.isfinite(std) else "")


def with_ci(iv: stats.Interval) -> str:
    """``0.812 [0.74, 0.88]``, or the estimate with why it has no interval (too few units per class)."""
    if iv.note:
        return f"{iv.estimate:.3f} ({iv.note})"
    return f"{iv.estimate:.3f} [{fmt(iv.low)}, {fmt(iv.high)}]"


def diff_ci(iv: stats.Interval | arm_stats.SeedInterval) -> str:
    """A difference in a table cell: ``stats.signed``, or "(not enough seeds)" for a seed-aware one without interval."""
    return stats.signed(iv) if getattr(iv, "judgeable", True) else f"{iv.estimate:+.3f} (not enough seeds)"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    clean = [[" ".join(str(c).split()).replace("|", "\\|") for c in row] for row in rows]
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + ["| " + " | ".join(r) + " |" for r in clean]


def settings_source(values) -> str:
    """Where the settings shown come from. A job bundle written before the report resolved interpolations keeps the
    text of its config (``${arms.${model.init}.lr}``), and says so."""
    if any("${" in v for v in values):
        return "as written in their .hydra/config.yaml"
    return "the values they used, from their .hydra/config.yaml"


def common_settings(runs: list[Run]) -> list[tuple[str, str]]:
    out = []
    configs = [r.config for r in runs if r.config]
    for key in SETTING_KEYS:
        vals = {json.dumps(dig(c, key, NOT_RECORDED), default=str) for c in configs}
        if len(vals) == 1 and dig(configs[0], key, NOT_RECORDED) is not NOT_RECORDED:  # a key no job recorded is not shown
            out.append((key, setting_text(dig(configs[0], key))))
    return out


def test_set_line(sweep: Sweep) -> str:
    sets = {frozenset(r.predictions) for r in sweep.complete}
    if not sets:
        return "No complete run: no test predictions to report."
    biggest = max(sets, key=len)
    n_pos = sum(1 for _, y in biggest if y == 1)
    same = "all runs" if len(sets) == 1 else f"{len(sets)} different test sets among the runs; the largest"
    return f"Test set ({same}): {len(biggest)} images, {n_pos} COVID and {len(biggest) - n_pos} non-COVID."


def header(ctx: Context) -> list[str]:
    """Title, provenance, the sweep command, job counts, the test set and the shared settings."""
    sweep = ctx.sweep
    written = ctx.options.get("written")
    if not written:  # a rebuild from predictions keeps the line the report was first written with
        args = [sweep.source or str(sweep.path)]
        if not sweep.source:
            args += [f"--n-boot {ctx.n_boot}"] * (ctx.n_boot != stats.DEFAULT_BOOT) + [f"--seed {ctx.seed}"] * (ctx.seed != stats.DEFAULT_SEED)
            args += [f"--margin {m}={v}" for m, v in (ctx.options.get("margins") or {}).items()]
        written = {"stamp": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": f"python -m covidnet.report {' '.join(args)}"}
        ctx.options["written"] = written
    lines = [
        f"# Sweep report: {sweep.name or sweep.path.name}",
        "",
        f"Written {written['stamp']} by `{written['command']}`. This file, report.json, summary.csv, runs.csv and the "
        "figures are derived data: they are rewritten from the job directories every time the report runs, or from "
        "predictions.csv and jobs.json beside them (`python -m covidnet.report --from-predictions <this folder>`).",
        "",
    ]
    counts: dict[str, int] = defaultdict(int)
    for r in sweep.runs:
        counts[r.status] += 1
    lines += [
        f"Jobs: {len(sweep.runs)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}). "
        f"Swept factors: {', '.join(sweep.factors)} (rows); runs of a row differ in seed.",
        "",
        test_set_line(sweep),
    ]
    settings = common_settings(sweep.runs)
    if settings:
        lines += ["", f"Settings shared by all jobs ({settings_source(v for _, v in settings)}): " + ", ".join(f"`{k}={v}`" for k, v in settings) + "."]
    return lines


def render(ctx: Context, sections: list[Section]) -> str:
    """report.md: the header, then each section as ``## title``."""
    lines = header(ctx)
    for section in sections:
        lines += ["", f"## {section.title}", "", *section.lines]
    return "\n".join(lines)
