"""Figures of a sweep report: test ROC curves, learning curves from TensorBoard events, data efficiency;
and the report's "Figures" section, which draws them into the sweep directory."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from covidnet.metrics import stats
from covidnet.report.render import Context, Section
from covidnet.report.scoring import arrays, label, ordered_groups
from covidnet.report.sweep import Run, Sweep

# every figure the report may write, with its caption (figures of an earlier report that no longer apply are removed)
FIGURES = {
    "roc.png": "Test ROC curves of all runs, coloured by row of the summary.",
    "learning_curves.png": "Validation AUROC and loss per epoch (how fast each init learns): thin lines are runs, thick lines their mean.",
    "data_efficiency.png": "Test AUROC against the fraction of the training split used (dots are seeds).",
}


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


def figures_section(ctx: Context) -> Section:
    """Draw the figures that apply into the sweep directory and list them with their captions."""
    sweep, out = ctx.sweep, ctx.sweep.path
    for name in FIGURES:  # figures of an earlier report that no longer apply must not linger
        (out / name).unlink(missing_ok=True)
    figures, notes = [], []
    if sweep.complete:
        plot_roc(sweep, out / "roc.png")
        figures.append("roc.png")
        curves = {}
        for r in sweep.complete:
            try:
                if r.curves is None:  # kept on the run: the report folder's jobs.json records them (covidnet.report.bundle)
                    r.curves = read_curves(r.path)
                curves[r.name] = r.curves
            except Exception as err:  # noqa: BLE001 - a damaged events file costs its curve, not the report
                notes.append(f"{r.name}: no learning curve ({type(err).__name__}: {err}).")
        if plot_learning_curves(sweep, curves, out / "learning_curves.png"):
            figures.append("learning_curves.png")
        if plot_data_efficiency(sweep, out / "data_efficiency.png"):
            figures.append("data_efficiency.png")
    lines = []
    for name in figures:
        lines += [f"![{name}]({name})", "", FIGURES[name], ""]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    while lines and lines[-1] == "":
        lines.pop()
    return Section("Figures", lines)
