"""`visualize(cfg)`: CAM figure and CAM numbers for one or several trained checkpoints (see docs/cam.md).

Each model is rebuilt from its checkpoint alone, with the preprocessing it was trained with (the
data-module hyperparameters stored in the checkpoint; only the data location comes from the config).
``main`` is the command line of both ``python visualize.py`` and ``covidnet-visualize``:
``python visualize.py ckpt=[a.ckpt,b.ckpt]``.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image

from covidnet.cam import METHODS, check_methods, check_target
from covidnet import configs
from covidnet.atomic import atomic_path, write_json
from covidnet.cam_figure import draw
from covidnet.cam_metrics import summarize
from covidnet.cam_scores import compute_maps, faithfulness, lesion_pairs, localisation, shortcut
from covidnet.sampling import draw_per_class
from covidnet.checkpoint import CheckpointError, load_checkpoint
from covidnet.config_check import VISUALIZE, check_config
from covidnet.data import CovidCTDataModule
from covidnet.dataset import CLASS_NAMES, DatasetError, Sample, read_split
from covidnet.entry import hydra_app
from covidnet.errors import UserError
from covidnet.preprocess import InputSpec
from covidnet.run_dir import CHECKPOINT_DIR, INTERRUPTED, LAST_CHECKPOINT, NOT_TRAINED, TRAINED, RunDir, SweepDir
from covidnet.sources.base import SourceError

OUTPUT_FILES = ("figure.png", "images.csv", "results.json")
SCORE_IMAGES = ("figure", "split")


class VisualizeError(UserError, ValueError):
    """A visualize.py setting cannot be honoured; the message says which and what to do."""


@dataclass
class LoadedModel:
    name: str
    path: Path
    model: torch.nn.Module
    datamodule: CovidCTDataModule  # not set up: used for its preprocessing only
    chosen: Chosen


# --- checkpoints -------------------------------------------------------------------------------------
def as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v) for v in value]
    return [str(value)]


@dataclass
class Chosen:
    """A checkpoint to draw: its run directory (when it lies in one) and, for an unfinished run, a label."""

    path: Path
    run: RunDir | None = None
    label: str = ""  # '' for a trained run's best checkpoint or a file passed as such; else e.g. 'interrupted: last.ckpt'


def run_checkpoint(run: RunDir, include_unfinished: bool) -> tuple[Chosen | None, str]:
    """A run directory's checkpoint to draw, or None and why it is skipped.

    A trained run stands for its best checkpoint, found inside the run directory (``RunDir``), never
    through the absolute path recorded in metrics.json, so a copied sweep reads its own files. An
    unfinished run (interrupted, failed, not trained) is skipped, or with ``include_unfinished`` drawn
    from its last checkpoint and labelled with its state."""
    state = run.state()
    if state == TRAINED:
        best = run.best_checkpoint()
        if best is not None:
            return Chosen(best, run), ""
        return None, f"trained, but the best checkpoint named in its metrics.json is not in {run.checkpoint_dir}"
    why = {NOT_TRAINED: "not trained (its metrics.json records no best checkpoint)",
           INTERRUPTED: "unfinished (no metrics.json: interrupted, failed or still running)"}[state]
    if not include_unfinished:
        return None, why
    last = run.last_checkpoint()
    epochs = sorted(run.checkpoint_dir.glob("*.ckpt"))
    ckpt = last or (epochs[-1] if len(epochs) == 1 else None)
    if ckpt is None:
        return None, f"{why}; include_unfinished=true, but it has no {LAST_CHECKPOINT} (nor a single checkpoint)"
    return Chosen(ckpt, run, f"{'not trained' if state == NOT_TRAINED else 'unfinished'}: {ckpt.name}"), ""


UNFINISHED_HINT = "Pass include_unfinished=true to draw their last checkpoints, labelled as such."


def resolve_checkpoints(ckpt, include_unfinished: bool = False, tool: str = "visualize",
                        hint: str = UNFINISHED_HINT) -> tuple[list[Chosen], list[tuple[Path, str]]]:
    """``ckpt=`` entries -> (checkpoints to draw, skipped run directories with the reason). An entry may be
    a .ckpt file, a run directory (its best checkpoint) or a sweep directory (each job's, in name order).
    ``tool`` and ``hint`` word the note on skipped runs for the entry point that asked (evaluate.py has no
    include_unfinished)."""
    entries = as_list(ckpt)
    if not entries:
        raise VisualizeError("No checkpoint given: pass ckpt=path/to/file.ckpt or ckpt=[a.ckpt,b.ckpt].")
    chosen: list[Chosen] = []
    skipped: list[tuple[Path, str]] = []
    for entry in entries:
        p = Path(entry).expanduser()
        if not p.is_dir():
            run = RunDir(p.parent.parent) if p.parent.name == CHECKPOINT_DIR else None
            chosen.append(Chosen(p, run if run is not None and run.is_run() else None))  # load_checkpoint says if it is missing or not ours
            continue
        if RunDir(p).is_run():
            runs = [RunDir(p)]
        else:
            found = {r.path for r in SweepDir(p).job_dirs()} | {c.parent for c in p.glob(f"*/{CHECKPOINT_DIR}") if c.is_dir()}
            runs = [RunDir(d) for d in sorted(found)]
            if not runs:
                raise VisualizeError(f"{p} is a directory with no run in it or in its subfolders; pass a .ckpt file, a run or a sweep directory.")
        for run in runs:
            pick, why = run_checkpoint(run, include_unfinished)
            if pick is None:
                skipped.append((run.path, why))
            else:
                chosen.append(pick)
    if skipped:
        lines = "\n".join(f"  {path}: {why}" for path, why in skipped)
        hint = "" if include_unfinished else hint
        print(f"{tool}: skipped {len(skipped)} run(s) without a best checkpoint:\n{lines}\n{hint.strip()}".rstrip())
    if not chosen:
        raise VisualizeError(f"No checkpoint to draw: every run given was skipped ({'; '.join(f'{p.name}: {w}' for p, w in skipped)}).")
    return chosen, skipped


def model_name(choice: Chosen, hparams: dict) -> str:
    """The job's name from its Hydra record (e.g. ``init=scratch``), else ``<init>-<arch>``; an unfinished
    run's label is appended in brackets."""
    job = choice.run.job_name() if choice.run is not None else ""
    name = job or f"{hparams.get('init')}-{hparams.get('arch')}"
    return f"{name} [{choice.label}]" if choice.label else name


def best_checkpoint(run_dir: str | Path) -> Path:
    """A trained run's best checkpoint, inside its run directory (covidnet.run_dir.RunDir)."""
    pick, why = run_checkpoint(RunDir(run_dir), include_unfinished=False)
    if pick is None:
        raise VisualizeError(f"{run_dir}: {why}.")
    return pick.path


def load_models(chosen, data_root: str, device: str) -> list[LoadedModel]:
    """Rebuild each checkpoint's model and preprocessing; ``chosen`` is resolve_checkpoints' list, or
    ``ckpt=`` entries (files, run or sweep directories) that are resolved here."""
    if not (isinstance(chosen, list) and all(isinstance(c, Chosen) for c in chosen)):
        chosen, _ = resolve_checkpoints(chosen)
    models: list[LoadedModel] = []
    for choice in chosen:
        path = choice.path
        model, dm_hparams = load_checkpoint(path, map_location=device)
        if not dm_hparams:
            raise CheckpointError(f"{path} holds no data-module hyperparameters, so the preprocessing it was trained with is unknown; use a checkpoint written by train.py.")
        try:
            dm = CovidCTDataModule(**{**dm_hparams, "root": data_root})
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: its data-module hyperparameters do not rebuild the preprocessing ({err}).") from err
        stored = model.hparams.get("input_spec")
        if stored is not None and InputSpec.from_dict(stored) != dm.spec:
            raise CheckpointError(f"{path}: the model's input_spec {dict(stored)} is not its data module's {dm.spec.as_dict()}; "
                                  "the checkpoint does not say what its input was. Use a checkpoint written by train.py.")
        name = model_name(choice, dict(model.hparams))
        taken = {m.name for m in models}
        if name in taken:
            name = next(f"{name} ({i})" for i in range(2, len(taken) + 3) if f"{name} ({i})" not in taken)
        models.append(LoadedModel(name, path, model.to(device).eval(), dm, choice))
    return models


# --- images ----------------------------------------------------------------------------------------------
def select_images(root: str | Path, split: str, n_per_class: int, seed: int) -> list[Sample]:
    """``n_per_class`` seeded random COVID images, then as many non-COVID ones (split-file order within a class)."""
    if n_per_class < 1:
        raise VisualizeError(f"n_per_class={n_per_class} must be at least 1.")
    samples = read_split(root, split)
    labels = [s.label for s in samples]
    for label in (1, 0):
        if n_per_class > labels.count(label):
            raise VisualizeError(f"n_per_class={n_per_class}, but the {split} split has only {labels.count(label)} {CLASS_NAMES[label]} images; lower n_per_class.")
    drawn = draw_per_class(labels, n_per_class, seed, classes=(1, 0))
    return [samples[i] for i in drawn[1] + drawn[0]]


def lesion_set(folder: str | Path) -> list[tuple[Path, Path]]:
    """``localize=``'s (image, lesion mask) pairs (covidnet.cam_scores.lesion_pairs); a folder that is not one is
    a visualize setting to fix."""
    try:
        return lesion_pairs(folder)
    except SourceError as err:
        raise VisualizeError(str(err)) from err


# --- output -----------------------------------------------------------------------------------------------
def fresh_out_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir).expanduser()
    clash = [f for f in OUTPUT_FILES if (out / f).exists()]
    if clash:
        raise VisualizeError(f"{out} already holds {', '.join(clash)}; covidnet never overwrites results: choose another out_dir (or leave it at its default).")
    out.mkdir(parents=True, exist_ok=True)
    return out


def visualize(cfg: DictConfig) -> dict:
    """Draw the figure and compute the numbers; returns the written paths and the results."""
    start = time.time()
    check_config(cfg, VISUALIZE)  # every option, before any checkpoint or image is read
    methods = check_methods(list(cfg.methods))
    target = check_target(cfg.target)
    if cfg.score_images not in SCORE_IMAGES:
        raise VisualizeError(f"score_images={cfg.score_images!r}: choose figure (the drawn images) or split (every image of the split).")
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto" else cfg.device)
    root = str(Path(str(cfg.data.root)).expanduser().resolve())
    chosen, skipped = resolve_checkpoints(cfg.ckpt, bool(cfg.get("include_unfinished", False)))
    models = load_models(chosen, root, device)
    pairs = lesion_set(cfg.localize) if cfg.get("localize") else None
    out = fresh_out_dir(cfg.out_dir)
    try:
        chosen = select_images(root, cfg.split, int(cfg.n_per_class), int(cfg.seed))
    except DatasetError as err:
        raise VisualizeError(f"data.root={root}: {err}") from err

    # the scored images: the drawn ones, or the whole split (drawn ones included)
    scored = chosen if cfg.score_images == "figure" else read_split(root, cfg.split)
    index = {s.path: i for i, s in enumerate(scored)}
    rows = [index[s.path] for s in chosen]
    labels = [s.label for s in scored]
    maps = {m.name: compute_maps(m, [s.path for s in scored], labels, methods, target, int(cfg.batch_size), cfg.layer) for m in models}

    results: dict = {
        "split": cfg.split, "scored_images": cfg.score_images, "n_scored": len(scored), "target": target,
        "methods": methods, "layer": cfg.layer, "faithfulness_fraction": cfg.faithfulness_fraction, "seed": cfg.seed,
        "models": {m.name: {"checkpoint": str(m.path), "run_dir": str(m.chosen.run.path) if m.chosen.run else None,
                            "unfinished": m.chosen.label or None, **{k: v for k, v in m.model.hparams.items()},
                            **m.datamodule.spec.as_dict()}
                   for m in models},
        "skipped": [{"run_dir": str(path), "reason": why} for path, why in skipped],
        "faithfulness": {}, "shortcut": {}, "localisation": {},
    }
    per_image: dict[str, dict] = {}
    for m in models:
        mp = maps[m.name]
        drops = faithfulness(m, mp, float(cfg.faithfulness_fraction), int(cfg.seed), int(cfg.batch_size), cfg.layer)
        shares, area = shortcut(m, mp)
        results["faithfulness"][m.name] = {k: {kind: summarize(d) for kind, d in v.items()} for k, v in drops.items()}
        results["shortcut"][m.name] = {"lung_area": summarize(area), "no_lungs_found": int(np.isnan(area).sum()),
                                       **{k: summarize(v) for k, v in shares.items()}}
        per_image[m.name] = {"drops": drops, "shares": shares, "area": area}
    if pairs:
        results["localisation"] = {m.name: localisation(m, pairs, methods, target, int(cfg.batch_size), cfg.layer) for m in models}
    else:
        results["localisation"] = None

    # per-image table: truth, P(COVID) and target per model, and each map's numbers
    header = ["file", "label", "figure_row"]
    for m in models:
        header += [f"{m.name}:prob_covid", f"{m.name}:target", f"{m.name}:lung_area"]
        header += [f"{m.name}:{method}:{k}" for method in methods for k in ("prob_drop", "logit_drop", "mass_in_lungs")]
    figure_row = {i: r for r, i in enumerate(rows)}
    table = []
    for i, s in enumerate(scored):
        line = [s.name, s.label, figure_row.get(i, "")]
        for m in models:
            mp, pi = maps[m.name], per_image[m.name]
            line += [f"{mp.probs[i]:.6f}", mp.categories[i], f"{pi['area'][i]:.4f}"]
            line += [f"{v:.4f}" for method in methods for v in (pi["drops"][method]["prob_drop"][i], pi["drops"][method]["logit_drop"][i], pi["shares"][method][i])]
        table.append(line)
    with atomic_path(out / "images.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(table)

    title = (f"{cfg.split} split, {cfg.n_per_class} COVID + {cfg.n_per_class} non-COVID, seed {cfg.seed}\n"
             f"GradCAM target: {'true label' if target == 'label' else 'prediction'}\nEigenCAM: no target, sign per docs/cam.md")
    figure = draw(models, maps, rows, scored, methods, target, title)
    Image.fromarray(figure).save(out / "figure.png")
    if cfg.get("tensorboard"):
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(out / "tensorboard")) as writer:
            writer.add_image("visualize/figure", figure, dataformats="HWC")
    results["seconds"] = round(time.time() - start, 1)
    write_json(out / "results.json", results)
    written = {name: str(out / name) for name in OUTPUT_FILES}
    print_summary(results, written, methods)
    return {"out_dir": str(out), "files": written, "results": results, "rows": len(rows)}


def default_settings() -> DictConfig:
    """visualize.py's settings as conf/visualize.yaml and conf/cam/default.yaml set them (read from the
    package's configs, so this works from an installed package too); ckpt and out_dir unset."""
    cfg = configs.load("visualize.yaml")
    cfg.pop("defaults", None)
    cfg = OmegaConf.merge(cfg, configs.load("cam/default.yaml"))
    cfg.out_dir = None
    return cfg


def visualize_runs(ckpt: list[str | Path], data_root: str | Path | None, out_dir: str | Path, settings: list[str] | None = None) -> dict:
    """:func:`visualize` without Hydra's command line: the checkpoints (files, run or sweep directories),
    the data (None: visualize.yaml's default) and the output folder as arguments, every other setting at its default unless ``settings``
    (``key=value`` as on visualize.py's command line, e.g. ``n_per_class=5``, ``methods=[gradcam]``) changes it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = default_settings()
    try:
        parsed = OverridesParser.create().parse_overrides(list(settings or []))
    except Exception as err:  # noqa: BLE001 - Hydra's grammar errors name the bad item
        raise VisualizeError(f"settings {settings}: {err}") from err
    for o in parsed:
        key = o.get_key_element().lstrip("+~")
        if key in ("ckpt", "data.root", "out_dir") or OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
            raise VisualizeError(f"setting {key!r}: not a visualize setting that can be changed here "
                                 f"(choose from {', '.join(k for k in cfg if k not in ('ckpt', 'data', 'out_dir', 'task_name'))}).")
        OmegaConf.update(cfg, key, o.value(), merge=False)
    cfg.ckpt = [str(p) for p in ckpt]
    if data_root is not None:
        cfg.data.root = str(data_root)
    cfg.out_dir = str(out_dir)
    return visualize(cfg)


def print_summary(results: dict, written: dict, methods: list[str]) -> None:
    def fmt(s):
        return "n/a" if not s or s["mean"] is None else f"{s['mean']:.3f}"

    print(f"CAM results ({results['n_scored']} {results['split']} images scored, target={results['target']}):")
    for name in results["models"]:
        f, sc = results["faithfulness"][name], results["shortcut"][name]
        print(f"  {name}: lung-field area {fmt(sc['lung_area'])} (no lungs found in {sc['no_lungs_found']}); removal drops logit, most/least relevant first: "
              f"block-random {fmt(f['block_random']['logit_drop'])}/{fmt(f['block_random']['lerf_logit_drop'])}, "
              f"pixel-random {fmt(f['pixel_random']['logit_drop'])}")
        for meth in methods:
            print(f"    {meth}: drops P {fmt(f[meth]['prob_drop'])}, logit {fmt(f[meth]['logit_drop'])} (minus block-random "
                  f"{fmt(f[meth]['logit_drop_minus_block_random'])}), least relevant first {fmt(f[meth]['lerf_logit_drop'])}; "
                  f"CAM mass in lungs {fmt(sc[meth])}")
        loc = (results.get("localisation") or {}).get(name)
        if loc:
            parts = [f"{meth}: pointing {fmt(loc[meth]['pointing_game_hit_rate'])}, in lesion {fmt(loc[meth]['mass_in_lesion'])}" for meth in methods]
            print(f"    lesions ({loc['n_slices']} slices, lesion area {fmt(loc['lesion_area_share'])}): " + "; ".join(parts))
    for path in written.values():
        print(f"Wrote {path}")


@hydra_app("visualize")
def main(cfg: DictConfig) -> None:
    visualize(cfg)


__all__ = ["main", "visualize", "visualize_runs", "default_settings", "VisualizeError", "METHODS"]
