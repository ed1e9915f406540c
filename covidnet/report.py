"""Sweep report: does transfer help, by how much, and how sure are we?

``python -m covidnet.report <sweep dir> [--cam]`` reads every job directory of a sweep (as written by
``covidnet.train``) and writes, into the sweep directory:

- ``report.md``: settings, a summary table per init (and per other swept key), mean +- std over seeds;
  each init against ``scratch`` on the same test images with a paired bootstrap interval; every run
  with 95% bootstrap intervals; failed, interrupted and never-started jobs; figures.
- ``summary.csv`` (one row per group) and ``runs.csv`` (one row per job, with intervals).
- ``roc.png``, ``learning_curves.png`` and, when ``data.fraction`` was swept, ``data_efficiency.png``.

These files are derived data: they are rewritten from the job directories each time the report runs
(at the end of every multirun, see ``covidnet.hydra_callbacks.SweepReport``, or by hand for a sweep
that was interrupted or run in pieces). The job directories themselves are only read.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml
from omegaconf import OmegaConf

from covidnet import stats
from covidnet.atomic import atomic_path, write_text
from covidnet.errors import UserError
from covidnet.inits import resolve_init_defaults
from covidnet.run_dir import FAILED, NOT_TRAINED, RunDir, SweepDir, not_job_keys, read_predictions_csv

REFERENCE_INIT = "scratch"
# Settings shown at the top of the report when every job has them (as written in the job's config).
SETTING_KEYS = (
    "data.root", "data.image_size", "data.batch_size", "data.fraction", "data.normalization", "model.arch", "model.freeze",
    "model.backbone_lr_scale", "model.optimizer.lr", "trainer.max_epochs", "trainer.accelerator", "trainer.precision",
)
# Keys that never name a factor of the comparison: the replicate key, and those that do not name a job
# (covidnet.run_dir.not_job_keys: Hydra's override_dirname.exclude_keys in conf/hydra/default.yaml).
REPLICATE_KEY = "seed"
NOT_FACTORS = {REPLICATE_KEY, *not_job_keys()}
FIGURES = ("roc.png", "learning_curves.png", "data_efficiency.png")


class ReportError(UserError, ValueError):
    """The directory is not a sweep the report can read; the message says what was expected."""


# --- reading one job ---------------------------------------------------------------------------------
@dataclass
class Run:
    """One job directory of a sweep (or one expected job that never started: ``path`` is None)."""

    name: str
    path: Path | None
    overrides: dict[str, str]
    status: str  # complete | no test predictions | failed | incomplete | not started
    message: str = ""
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    predictions: dict[tuple[str, int], float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)  # the swept keys' values, filled by load_sweep
    points: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, stats.Interval] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "complete"

    @property
    def seed(self) -> str:
        return str(self.metrics.get("seed", self.overrides.get("seed", self.config.get("seed", "?"))))

    @property
    def init(self) -> str:
        return str(self.overrides.get("init") or self.metrics.get("init") or dig(self.config, "model.init") or "?")


def dig(tree: dict, dotted: str, default=None):
    """``tree['a']['b']`` for ``'a.b'``; ``default`` when any level is missing."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """Hydra override strings -> {key: value as written} (Hydra's own parser, so quoting is handled)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(x) for x in lines])
    return {o.get_key_element().lstrip("+~"): o.get_value_element_as_str() for o in parsed}


def read_yaml(path: Path) -> dict | list | None:
    if not path.is_file():
        return None
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def recorded_failures(sweep_dir: Path) -> dict[str, str]:
    """{resolved job dir: error} from the sweep's failed-jobs record (covidnet.run_dir.SweepDir)."""
    return SweepDir(sweep_dir).failures()


def read_predictions(path: Path) -> dict[tuple[str, int], float]:
    try:
        return read_predictions_csv(path)
    except ValueError as err:
        raise ReportError(str(err)) from err


def read_job(job_dir: Path, sweep_dir: Path, failures: dict[str, str]) -> Run:
    """Everything the report needs from one job directory; a job without results gets a status, not an error.

    ``failures`` maps resolved job directories to the error a failed job raised."""
    rd = RunDir(job_dir)
    name = str(job_dir.relative_to(sweep_dir)) if job_dir != sweep_dir else job_dir.name
    overrides = parse_overrides(rd.overrides())
    run = Run(name=name, path=job_dir, overrides=overrides, status="complete", config=resolve_init_defaults(rd.config()))
    recorded = SweepDir.failure_of(rd, failures)
    try:
        metrics = rd.read_metrics()
    except (OSError, ValueError) as err:
        run.status, run.message = "unreadable", f"{type(err).__name__}: {err}"
        return run
    state = rd.state(failed=bool(recorded))
    if metrics is not None:
        run.metrics = metrics
        if state == NOT_TRAINED:
            run.status, run.message = "not trained", "metrics.json records no best checkpoint (nothing trained or validated, e.g. trainer.max_epochs=0): no test result"
            return run
        try:
            run.predictions = read_predictions(rd.predictions_path) if rd.predictions_path.is_file() else {}
        except (OSError, ValueError, KeyError) as err:  # ReportError is a ValueError
            run.status, run.message = "unreadable", f"{type(err).__name__}: {err}"
            return run
        if not run.predictions and rd.predictions_path.is_file():
            run.status, run.message = "unreadable", f"{rd.predictions_path.name} holds no predictions"
        elif not rd.predictions_path.is_file():
            run.status, run.message = "no test predictions", "metrics.json but no predictions_test.csv (trained with test=false?)"
    elif state == FAILED:
        run.status, run.message = "failed", recorded
    else:
        run.status = "incomplete"
        run.message = "no metrics.json: the job failed, was interrupted, or is still running"
        if rd.last_checkpoint() is not None:
            args = " ".join(f"{k}={v}" for k, v in overrides.items())
            run.message += f"; resume with `python train.py {args} ckpt_path=last hydra.run.dir='{job_dir}'`"
    return run


# --- reading the sweep -------------------------------------------------------------------------------
def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Directories holding a job (``.hydra/`` or ``metrics.json``), searched below ``sweep_dir``."""
    return [r.path for r in SweepDir(sweep_dir).job_dirs()]


def sweep_definition(sweep_dir: Path) -> tuple[list[str], list[list[str]], set[str], set[str]]:
    """From ``multirun.yaml``: (task overrides as typed, every job's override strings, swept keys, exclude keys)."""
    cfg = read_yaml(sweep_dir / "multirun.yaml")
    if not isinstance(cfg, dict):
        return [], [], set(), set()
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = [str(x) for x in dig(cfg, "hydra.overrides.task", []) or []]
    params = dig(cfg, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + task
    parsed = OverridesParser.create().parse_overrides(arguments)
    swept = {o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()}
    batches = BasicSweeper.split_arguments(parsed, None)
    jobs = [list(job) for batch in batches for job in batch]
    exclude = set(dig(cfg, "hydra.job.config.override_dirname.exclude_keys", []) or [])
    return task, jobs, swept, exclude


def job_identity(overrides: dict[str, str], ignore: set[str]) -> tuple:
    return tuple(sorted((k, v) for k, v in overrides.items() if k not in ignore))


@dataclass
class Sweep:
    path: Path
    command: str
    runs: list[Run]  # every job directory and every expected job that never started
    factors: list[str]  # swept keys other than seed: what a summary row stands for (init first)

    @property
    def complete(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    @property
    def problems(self) -> list[Run]:
        return [r for r in self.runs if not r.ok]


def load_sweep(sweep_dir: str | Path, failures: dict[str, str] | None = None) -> Sweep:
    """All jobs of a sweep. Errors of failed jobs come from ``<sweep dir>/failed_jobs.jsonl`` and from
    ``failures`` (job directory -> message, for a caller that saw a job fail)."""
    sweep_dir = Path(sweep_dir).expanduser().resolve()
    if not sweep_dir.is_dir():
        raise ReportError(f"Sweep directory not found: {sweep_dir}. Pass the directory Hydra printed, e.g. logs/train/multiruns/<stamp>.")
    task, expected, swept, exclude = sweep_definition(sweep_dir)
    failures = {**recorded_failures(sweep_dir), **(failures or {})}
    runs = [read_job(d, sweep_dir, failures) for d in find_job_dirs(sweep_dir)]
    if not runs and not expected:
        raise ReportError(
            f"{sweep_dir} holds no job directories (none with .hydra/ or metrics.json) and no multirun.yaml. "
            "Pass a sweep directory written by `python train.py -m ...`."
        )
    ignore = exclude | (NOT_FACTORS - {"seed"})
    present = {job_identity(r.overrides, ignore) for r in runs}
    for lines in expected:
        job = parse_overrides(lines)
        if job_identity(job, ignore) not in present:
            # named as Hydra names a job directory (hydra.job.override_dirname)
            name = ",".join(sorted(line for line in lines if line.split("=")[0].lstrip("+~") not in exclude))
            runs.append(Run(name=name, path=None, overrides=job, status="not started", message="expected by multirun.yaml; no job directory"))

    # a factor is a key swept in multirun.yaml or taking different values across jobs
    values: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        for k, v in r.overrides.items():
            values[k].add(v)
    keys_in_all = set.intersection(*(set(r.overrides) for r in runs)) if runs else set()
    varying = {k for k, v in values.items() if len(v) > 1 or k not in keys_in_all}
    factors = sorted((swept | varying) - exclude - NOT_FACTORS - {"init"}, key=lambda k: (k != "model.arch", k))
    factors = ["init"] + factors
    for r in runs:
        r.params = {"init": r.init} | {k: r.overrides.get(k, str(dig(r.config, k, "default"))) for k in factors[1:]}
    command = "python train.py -m " + " ".join(task) if task else ""
    return Sweep(sweep_dir, command, runs, factors)


# --- statistics --------------------------------------------------------------------------------------
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
        for m in stats.METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = stats.mean_std([r.points[m] for r in done])
        for name in ("best_epoch", "epochs_trained", "best_val_score", "fit_seconds"):
            row[f"{name}_mean"], row[f"{name}_std"] = stats.mean_std([r.metrics.get(name) for r in done])
        row["seconds_per_epoch_mean"], row["seconds_per_epoch_std"] = stats.mean_std(
            [r.metrics["fit_seconds"] / r.metrics["epochs_trained"] for r in done if r.metrics.get("fit_seconds") and r.metrics.get("epochs_trained")])
        rows.append(row)
    return rows


@dataclass
class Comparison:
    context: str
    arm: str
    reference: str
    n_arm: int
    n_reference: int
    n_images: int
    n_dropped: int
    diffs: dict[str, stats.Interval]

    def sentence(self, metric: str) -> str:
        iv = self.diffs[metric]
        name = {"auroc": "AUROC", "acc": "accuracy"}.get(metric, metric)
        if not math.isfinite(iv.low):
            return f"{name}: no interval (the test resamples never held both classes)."
        span = f"95% CI {iv.low:+.3f} to {iv.high:+.3f}"
        if iv.includes(0.0):
            return (
                f"{name}: {self.arm} minus {self.reference} = {iv.estimate:+.3f} ({span}). The interval includes zero: "
                f"on these {self.n_images} test images this sweep does not show a difference between {self.arm} and {self.reference}."
            )
        direction = "higher" if iv.estimate > 0 else "lower"
        return (
            f"{name}: {self.arm} is {direction} than {self.reference} by {abs(iv.estimate):.3f} ({span}); "
            f"the interval excludes zero."
        )


def comparisons(sweep: Sweep, n_boot: int, seed: int) -> list[Comparison]:
    """Each init against ``scratch`` within every combination of the other factors, on shared test images."""
    others = sweep.factors[1:]
    out = []
    for context_key, runs in ordered_groups(sweep.complete, others).items():
        by_init: dict[str, list[Run]] = defaultdict(list)
        for r in runs:
            by_init[r.init].append(r)
        if REFERENCE_INIT not in by_init:
            continue
        ref = by_init[REFERENCE_INIT]
        for init in sorted(by_init):
            if init == REFERENCE_INIT:
                continue
            arm = by_init[init]
            every = arm + ref
            common = sorted(set.intersection(*(set(r.predictions) for r in every)))
            union = set.union(*(set(r.predictions) for r in every))
            if not common:
                raise ReportError(f"Runs of init={init} and init={REFERENCE_INIT} ({label(others, context_key)}) share no test image.")
            labels = np.array([k[1] for k in common])
            a = np.stack([arrays(r, common)[1] for r in arm])
            b = np.stack([arrays(r, common)[1] for r in ref])
            diffs = stats.paired_difference(labels, a, b, ("auroc", "acc"), n_boot, seed)
            out.append(Comparison(label(others, context_key), init, REFERENCE_INIT, len(arm), len(ref), len(common), len(union) - len(common), diffs))
    return out


# --- learning curves ---------------------------------------------------------------------------------
def read_curves(job_dir: Path, tags: tuple[str, ...] = ("val/auroc", "val/loss")) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch values of ``tags`` from a job's TensorBoard events (all event files; a resumed run's later value wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for events in sorted((job_dir / "tensorboard").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        available = set(acc.Tags().get("scalars", []))
        epoch_at = {e.step: int(round(e.value)) for e in acc.Scalars("epoch")} if "epoch" in available else {}
        for tag in tags:
            if tag not in available:
                continue
            for i, e in enumerate(acc.Scalars(tag)):
                epoch = epoch_at.get(e.step, i)
                if epoch not in found[tag] or e.wall_time >= found[tag][epoch][0]:
                    found[tag][epoch] = (e.wall_time, e.value)
    return {tag: sorted((ep, v) for ep, (_, v) in found[tag].items()) for tag in tags if found.get(tag)}


# --- figures -----------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colours(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_roc(sweep: Sweep, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=100)
    groups = ordered_groups(sweep.complete, sweep.factors)
    for colour, (key, runs) in zip(_colours(len(groups)), groups.items()):
        mean, std = stats.mean_std([r.points["auroc"] for r in runs])
        for i, r in enumerate(runs):
            fpr, tpr = stats.roc_curve(*arrays(r))
            text = f"{label(sweep.factors, key)} (AUROC {mean:.3f}" + (f" ± {std:.3f}" if math.isfinite(std) else "") + f", {len(runs)} run{'s' * (len(runs) > 1)})"
            ax.plot(fpr, tpr, color=colour, lw=1.2, alpha=0.8, label=text if i == 0 else None)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="false-positive rate (1 - specificity)", ylabel="true-positive rate (sensitivity)", title="Test ROC, one curve per run", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_learning_curves(sweep: Sweep, curves: dict[str, dict], path: Path) -> bool:
    """Validation AUROC and loss per epoch: thin line per run, thick line the mean over the group's runs."""
    groups = {k: [r for r in v if curves.get(r.name)] for k, v in ordered_groups(sweep.complete, sweep.factors).items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for colour, (key, runs) in zip(_colours(len(groups)), groups.items()):
        for ax, tag in zip(axes, ("val/auroc", "val/loss")):
            by_epoch: dict[int, list[float]] = defaultdict(list)
            for r in runs:
                points = curves[r.name].get(tag, [])
                if points:
                    ep, val = zip(*points)
                    ax.plot(ep, val, color=colour, lw=0.7, alpha=0.45, marker=".", ms=3)
                    for e, v in points:
                        by_epoch[e].append(v)
            if by_epoch:
                eps = sorted(by_epoch)
                ax.plot(eps, [np.mean(by_epoch[e]) for e in eps], color=colour, lw=2, marker="o" if len(eps) == 1 else None, label=f"{label(sweep.factors, key)} (mean of {len(runs)})")
    last = max((e for r in sweep.complete for pts in curves.get(r.name, {}).values() for e, _ in pts), default=0)
    for ax, title in zip(axes, ("validation AUROC", "validation loss")):
        ax.set(xlabel="epoch (0-based)", title=title, xlim=(-0.5, last + 0.5))
        ax.set_xticks(range(0, last + 1, max(1, math.ceil((last + 1) / 10))))
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")  # early scratch epochs can have losses 100x the later ones
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_data_efficiency(sweep: Sweep, path: Path, key: str = "data.fraction") -> bool:
    """Test AUROC against the fraction of the training split, one line per combination of the other factors."""
    if key not in sweep.factors:
        return False
    rest = [k for k in sweep.factors if k != key]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    groups = ordered_groups(sweep.complete, rest)
    for colour, (gkey, runs) in zip(_colours(len(groups)), groups.items()):
        by_x: dict[float, list[Run]] = defaultdict(list)
        for r in runs:
            by_x[float(r.params[key])].append(r)
        xs = sorted(by_x)
        for x in xs:
            ax.scatter([x] * len(by_x[x]), [r.points["auroc"] for r in by_x[x]], color=colour, s=12, alpha=0.5)
        means = [np.mean([r.points["auroc"] for r in by_x[x]]) for x in xs]
        ax.plot(xs, means, color=colour, lw=2, marker="o", label=label(rest, gkey))
        for x, m in zip(xs, means):
            n = {r.metrics.get("train_images") for r in by_x[x]} - {None}
            if len(n) == 1:
                ax.annotate(f"{n.pop()} train images", (x, m), textcoords="offset points", xytext=(4, -12), fontsize=7, color=colour)
    ax.set(xlabel=f"{key} (fraction of the training split)", ylabel="test AUROC", title="Data efficiency (dots: seeds, line: mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# --- writing -----------------------------------------------------------------------------------------
def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def pm(mean: float, std: float, digits: int = 3) -> str:
    return fmt(mean, digits) + (f" ± {fmt(std, digits)}" if math.isfinite(std) else "")


def with_ci(iv: stats.Interval) -> str:
    return f"{iv.estimate:.3f} [{fmt(iv.low)}, {fmt(iv.high)}]"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    clean = [[" ".join(str(c).split()).replace("|", "\\|") for c in row] for row in rows]
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + ["| " + " | ".join(r) + " |" for r in clean]


def write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def common_settings(runs: list[Run]) -> list[tuple[str, str]]:
    out = []
    configs = [r.config for r in runs if r.config]
    for key in SETTING_KEYS:
        vals = {json.dumps(dig(c, key), default=str) for c in configs}
        if len(vals) == 1:
            out.append((key, str(dig(configs[0], key))))
    return out


def test_set_line(sweep: Sweep) -> str:
    sets = {frozenset(r.predictions) for r in sweep.complete}
    if not sets:
        return "No complete run: no test predictions to report."
    biggest = max(sets, key=len)
    n_pos = sum(1 for _, y in biggest if y == 1)
    same = "all runs" if len(sets) == 1 else f"{len(sets)} different test sets among the runs; the largest"
    return f"Test set ({same}): {len(biggest)} images, {n_pos} COVID and {len(biggest) - n_pos} non-COVID."


def render(sweep: Sweep, rows: list[dict], comps: list[Comparison], figures: list[str], notes: list[str], n_boot: int, seed: int,
           cam_lines: list[str]) -> str:
    done, factors = sweep.complete, sweep.factors
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Sweep report: {sweep.path.name}",
        "",
        f"Written {stamp} by `python -m covidnet.report {sweep.path}`. This file, summary.csv, runs.csv and the figures are "
        "derived data: they are rewritten from the job directories every time the report runs.",
        "",
    ]
    if sweep.command:
        lines += [f"Sweep command (from multirun.yaml): `{sweep.command}`", ""]
    counts = defaultdict(int)
    for r in sweep.runs:
        counts[r.status] += 1
    lines += [
        f"Jobs: {len(sweep.runs)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}). "
        f"Swept factors: {', '.join(factors)} (rows); runs of a row differ in seed.",
        "",
        test_set_line(sweep),
        "",
    ]
    settings = common_settings([r for r in sweep.runs if r.path is not None])
    if settings:
        lines += ["Settings shared by all jobs (as written in their .hydra/config.yaml): " + ", ".join(f"`{k}={v}`" for k, v in settings) + ".", ""]

    lines += ["## Summary: mean ± std over seeds", ""]
    header = factors + ["runs", "acc", "AUROC", "F1", "sensitivity", "specificity", "precision", "best val epoch", "epochs", "fit time (s)", "s / epoch"]
    table = []
    for row in rows:
        table.append(
            [row[k] for k in factors]
            + [f"{row['runs']}" + (f" (+{row['not complete']} not complete)" if row["not complete"] else "")]
            + [pm(row[f"{m}_mean"], row[f"{m}_std"]) for m in stats.METRICS]
            + [pm(row["best_epoch_mean"], row["best_epoch_std"], 1), pm(row["epochs_trained_mean"], row["epochs_trained_std"], 1), pm(row["fit_seconds_mean"], row["fit_seconds_std"], 0),
               pm(row["seconds_per_epoch_mean"], row["seconds_per_epoch_std"], 1)]
        )
    lines += md_table(header, table)
    lines += [
        "",
        "Test metrics are recomputed from each run's predictions_test.csv (COVID positive, P(COVID) > 0.5); std is the sample "
        "standard deviation over seeds (– for a single run). The best validation epoch is 0-based (the checkpoint tested). "
        "Fit time is the wall time of training and validation on the machine that ran the job (trainer settings above).",
        "",
        f"## Transfer vs {REFERENCE_INIT}: paired bootstrap on the same test images",
        "",
    ]
    if comps:
        table = []
        for c in comps:
            table.append([c.context, f"{c.arm} − {c.reference}", f"{c.n_arm} / {c.n_reference}", f"{c.n_images}" + (f" ({c.n_dropped} not in every run, left out)" if c.n_dropped else "")]
                         + [with_ci(c.diffs[m]) for m in ("auroc", "acc")])
        lines += md_table(["other factors", "difference", "runs (arm / ref)", "test images", "Δ AUROC [95% CI]", "Δ accuracy [95% CI]"], table)
        lines += [""]
        for c in comps:
            prefix = f"{c.context}: " if len(comps) > 1 else ""
            lines += [f"- {prefix}{c.sentence('auroc')}", f"- {prefix}{c.sentence('acc')}"]
        lines += [
            "",
            f"How: test images are paired by file name; on each of {n_boot} resamples of the test images (seed {seed}) every run's "
            "metric is computed, averaged over the seeds of each init, and the averages are subtracted. The estimate is the "
            "difference of the seed means in the summary. The interval covers which test images were drawn; training "
            "randomness enters only through the seeds that were run (their spread is the ± above), so few seeds make it optimistic.",
            "",
        ]
    else:
        inits = sorted({r.init for r in done})
        swept = sorted({r.init for r in sweep.runs})
        why = f"no complete {REFERENCE_INIT} run" if REFERENCE_INIT not in inits else "no other init with a complete run"
        hint = "see the failed jobs below" if len(swept) > 1 else f"sweep `init={REFERENCE_INIT},imagenet` to compare"
        lines += [f"No comparison: {why} (inits with complete runs: {', '.join(inits) or 'none'}; in the sweep: {', '.join(swept)}); {hint}.", ""]

    lines += [f"## Runs, with 95% bootstrap intervals over test images ({n_boot} resamples, seed {seed})", ""]
    header = ["job"] + [k for k in factors] + ["seed", "acc", "AUROC", "F1", "sensitivity", "specificity", "precision", "best epoch", "fit s"]
    table = []
    for r in sorted(done, key=lambda r: (group_key(r, factors), sort_value(r.seed))):
        table.append([r.name] + [r.params[k] for k in factors] + [r.seed] + [with_ci(r.intervals[m]) for m in stats.METRICS]
                     + [fmt(r.metrics.get("best_epoch")), fmt(r.metrics.get("fit_seconds"), 0)])
    lines += md_table(header, table) if table else ["No complete run."]
    undefined = sum(r.intervals["auroc"].n_undefined for r in done)
    if undefined:
        lines += ["", f"{undefined} resamples held one class only and have no AUROC; they are left out of the AUROC intervals."]

    lines += ["", "## Failed, interrupted or missing jobs", ""]
    if sweep.problems:
        short = [r.message if len(r.message) <= 400 else r.message[:400] + " …" for r in sweep.problems]
        lines += md_table(["job", "status", "message"], [[r.name, r.status, m] for r, m in zip(sweep.problems, short)])
        lines += ["", "These jobs are not in the summary or the comparisons."]
    else:
        lines += ["None: every job expected by the sweep wrote its metrics and test predictions."]

    lines += ["", "## Figures", ""]
    captions = {
        "roc.png": "Test ROC curves of all runs, coloured by row of the summary.",
        "learning_curves.png": "Validation AUROC and loss per epoch (how fast each init learns): thin lines are runs, thick lines their mean.",
        "data_efficiency.png": "Test AUROC against the fraction of the training split used (dots are seeds).",
    }
    for name in figures:
        lines += [f"![{name}]({name})", "", captions[name], ""]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    lines += ["## Class activation maps", ""] + cam_lines + [""]
    return "\n".join(lines)


def run_rows(sweep: Sweep) -> list[dict]:
    rows = []
    for r in sweep.runs:
        row = {"job": r.name, **{k: r.params.get(k, "") for k in sweep.factors}, "seed": r.seed, "status": r.status}
        for m in stats.METRICS:
            iv = r.intervals.get(m)
            row[m], row[f"{m}_low"], row[f"{m}_high"] = (iv.estimate, iv.low, iv.high) if iv else (None, None, None)
        for name in ("best_epoch", "epochs_trained", "best_val_score", "fit_seconds"):
            row[name] = r.metrics.get(name)
        row["message"] = r.message
        rows.append(row)
    return rows


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def run_cam(sweep: Sweep, overrides: list[str]) -> tuple[Path, dict, dict[str, str]]:
    """CAM numbers of every complete run's best checkpoint, by ``covidnet.visualize.visualize``.

    Results live in ``<sweep>/cam/results.json`` (then ``cam-2``, ...): an earlier computation for the
    same runs is reused; visualize never overwrites one. Returns (folder, results, {run name: model name}).
    """
    from covidnet.visualize import visualize

    run_dirs = {str(r.path.resolve()): r.name for r in sweep.complete if (r.path / "checkpoints").is_dir()}
    if not run_dirs:
        raise ReportError("No complete run has a checkpoints/ folder to compute CAMs from.")

    def models_by_run(results: dict) -> dict[str, str]:
        # visualize records each model's run directory (older results: its checkpoint, <run dir>/checkpoints/<file>.ckpt)
        return {run_dirs.get(str(Path(m.get("run_dir") or Path(m["checkpoint"]).parent.parent).resolve()), "?"): name
                for name, m in results.get("models", {}).items()}

    n = 1
    while True:
        out = sweep.path / ("cam" if n == 1 else f"cam-{n}")
        results_file = out / "results.json"
        if results_file.is_file():
            results = json.loads(results_file.read_text())
            if set(models_by_run(results)) == set(run_dirs.values()):
                return out, results, models_by_run(results)
        elif not out.exists():
            break
        n += 1
    cfg = OmegaConf.load(CONF_DIR / "visualize.yaml")
    cfg.pop("defaults", None)
    data_root = next((dig(r.config, "data.root") for r in sweep.complete if dig(r.config, "data.root")), None)
    if data_root is not None:
        cfg.data.root = data_root
    cfg.ckpt = sorted(run_dirs)  # a run directory stands for its best checkpoint
    cfg.out_dir = str(out)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ReportError(f"--cam-set {item!r}: expected key=value (a conf/visualize.yaml setting, e.g. n_per_class=5).")
        OmegaConf.update(cfg, key, yaml.safe_load(value) if value else None, merge=False)
    visualize(cfg)
    results = json.loads((out / "results.json").read_text())
    return out, results, models_by_run(results)


def cam_section(sweep: Sweep, compute: bool, overrides: list[str] | None = None) -> list[str]:
    """Per row of the summary: mean over runs of visualize's faithfulness, shortcut and localisation numbers."""
    if not compute:
        return ["Not computed. `python -m covidnet.report <sweep dir> --cam` adds the CAM numbers of each run's best checkpoint "
                "(covidnet.visualize; `--cam-set localize=../shared/data/covid-semiseg` adds lesion localisation)."]
    try:
        out, results, model_of = run_cam(sweep, overrides or [])
    except Exception as err:  # noqa: BLE001 - an optional section must not cost the rest of the report
        return [f"Asked for, but not computed: {type(err).__name__}: {err}", "",
                "Fix the cause (see covidnet.visualize / conf/visualize.yaml; `--cam-set key=value` passes its settings) and rerun the report."]
    methods = results.get("methods", [])

    def mean_of(runs: list[Run], section: str, *path: str) -> str:
        vals = []
        for r in runs:
            name = model_of.get(r.name)
            node = (results.get(section) or {}).get(name) if name else None
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and node.get("mean") is not None:
                vals.append(float(node["mean"]))
        return pm(*stats.mean_std(vals)) if vals else "–"

    groups = ordered_groups([r for r in sweep.complete if r.name in model_of], sweep.factors)
    header = sweep.factors + ["runs"]
    for m in methods:
        header += [f"{m}: confidence drop", f"{m}: CAM mass outside body"]
    header += ["block-random-map drop", "outside-body area"]
    local = bool(results.get("localisation"))
    if local:
        for m in methods:
            header += [f"{m}: pointing-game hits", f"{m}: CAM mass in lesion"]
        header += ["lesion area"]
    table = []
    for key, runs in groups.items():
        row = list(key) + [str(len(runs))]
        for m in methods:
            row += [mean_of(runs, "faithfulness", m, "prob_drop"), mean_of(runs, "shortcut", m)]
        row += [mean_of(runs, "faithfulness", "block_random", "prob_drop"), mean_of(runs, "shortcut", "outside_body_area")]
        if local:
            for m in methods:
                row += [mean_of(runs, "localisation", m, "pointing_game_hit_rate"), mean_of(runs, "localisation", m, "mass_in_lesion")]
            row += [mean_of(runs, "localisation", "lesion_area_share")]
        table.append(row)
    rel = out.relative_to(sweep.path)
    lines = [
        f"From `{rel}/results.json` (covidnet.visualize on each run's best checkpoint; figure `{rel}/figure.png`, per image "
        f"`{rel}/images.csv`): {results.get('n_scored')} {results.get('split')} images, GradCAM target = {results.get('target')}, "
        f"{results.get('faithfulness_fraction')} of the pixels removed for the confidence drop. Values are the mean ± std over the "
        "runs of a row of each run's mean over images.",
        "",
        *md_table(header, table),
        "",
        "Reading: a faithful map loses more confidence than a random map when its top pixels are removed; CAM mass outside "
        "the body well above the outside-body area means the model looks at the frame (text, borders) rather than the lungs.",
    ]
    if not local:
        lines += ["", "Lesion localisation not computed: add `--cam-set localize=<COVID-SemiSeg folder>`."]
    return lines


def write_report(sweep_dir: str | Path, cam: bool = False, n_boot: int = stats.DEFAULT_BOOT, seed: int = stats.DEFAULT_SEED,
                 failures: dict[str, str] | None = None, cam_overrides: list[str] | None = None) -> Path:
    """Write report.md, summary.csv, runs.csv and the figures into the sweep directory; return report.md's path."""
    sweep = load_sweep(sweep_dir, failures)
    score_runs(sweep, n_boot, seed)
    rows = summary_rows(sweep)
    comps = comparisons(sweep, n_boot, seed)
    out = sweep.path
    for name in FIGURES:  # figures of an earlier report that no longer apply must not linger
        (out / name).unlink(missing_ok=True)
    figures, notes = [], []
    if sweep.complete:
        plot_roc(sweep, out / "roc.png")
        figures.append("roc.png")
        curves = {}
        for r in sweep.complete:
            try:
                curves[r.name] = read_curves(r.path)
            except Exception as err:  # noqa: BLE001 - a damaged events file costs its curve, not the report
                notes.append(f"{r.name}: no learning curve ({type(err).__name__}: {err}).")
        if plot_learning_curves(sweep, curves, out / "learning_curves.png"):
            figures.append("learning_curves.png")
        if plot_data_efficiency(sweep, out / "data_efficiency.png"):
            figures.append("data_efficiency.png")
    write_csv(out / "summary.csv", rows)
    write_csv(out / "runs.csv", run_rows(sweep))
    text = render(sweep, rows, comps, figures, notes, n_boot, seed, cam_section(sweep, cam, cam_overrides))
    path = out / "report.md"
    write_text(path, text + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covidnet.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="a sweep directory, e.g. logs/train/multiruns/<stamp>")
    parser.add_argument("--cam", action="store_true", help="also compute the CAM numbers of each run's best checkpoint")
    parser.add_argument("--cam-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a conf/visualize.yaml setting for --cam, e.g. localize=../shared/data/covid-semiseg or device=cuda (repeatable)")
    parser.add_argument("--n-boot", type=int, default=stats.DEFAULT_BOOT, help="bootstrap resamples (default %(default)s)")
    parser.add_argument("--seed", type=int, default=stats.DEFAULT_SEED, help="bootstrap seed (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.sweep_dir, cam=args.cam, n_boot=args.n_boot, seed=args.seed, cam_overrides=args.cam_set)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Report written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
