"""`visualize(cfg)`: CAM figure and CAM numbers for one or several trained checkpoints (see docs/cam.md).

Each model is rebuilt from its checkpoint alone, with the preprocessing it was trained with (the
data-module hyperparameters stored in the checkpoint; only the data location comes from the config).
A library, not an app: ``python visualize.py`` (covidnet.apps.visualize) and the sweep report's CAM step
(covidnet.report.cam, through :func:`visualize_runs`) both call it, so neither app imports the other.
"""

from __future__ import annotations

import csv
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from covidnet.explain.cam import OPTIONS as CAM_OPTIONS
from covidnet.explain.cam import METHODS, check_methods
from covidnet.core import configs
from covidnet.core.atomic import atomic_path, write_json
from covidnet.explain.cam_figure import draw
from covidnet.explain.cam_metrics import summarize
from covidnet.explain.cam_scores import compute_maps, faithfulness, lesion_pairs, localisation, shortcut
from covidnet.images.sampling import draw_per_class
from covidnet.trained.checkpoint import OPTIONS as CHECKPOINT_OPTIONS
from covidnet.trained.checkpoint import load_models
from covidnet.data.datamodule import OPTIONS as DATA_OPTIONS
from covidnet.images.covid_ct_layout import CLASS_NAMES, SPLITS, DatasetError, Sample, read_split
from covidnet.core.errors import ConfigError, UserError
from covidnet.core.hardware import DEVICE
from covidnet.core.options import SEED, Table, boolean, check_config, integer, number, one_of
from covidnet.rundirs.run_checkpoints import NoCheckpointError, resolve_checkpoints
from covidnet.images.sources.base import SourceError

OUTPUT_FILES = ("figure.png", "images.csv", "results.json")
SCORE_IMAGES = ("figure", "split")

# visualize.py (conf/visualize.yaml): every option, checked before any checkpoint or image is read
VISUALIZE: Table = {
    **CHECKPOINT_OPTIONS,
    "seed": SEED,
    "data.root": DATA_OPTIONS["data.root"],
    "split": one_of(SPLITS),
    "n_per_class": integer(1),
    **CAM_OPTIONS,
    "score_images": one_of(SCORE_IMAGES).because("figure: the drawn images; split: every image of the split"),
    "faithfulness_fraction": number(0, 1, lo_open=True, hi_open=True),
    "batch_size": integer(1),
    "device": DEVICE,
    "tensorboard": boolean(),
    "include_unfinished": boolean(),
}


class VisualizeError(UserError, ValueError):
    """A visualize.py setting cannot be honoured; the message says which and what to do."""


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
    """``localize=``'s (image, lesion mask) pairs (covidnet.explain.cam_scores.lesion_pairs); a folder that is not one is
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
    check_config(cfg, VISUALIZE, ConfigError)  # every option, before any checkpoint or image is read
    methods, target = check_methods(cfg.methods), cfg.target  # (as a list)
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto" else cfg.device)
    root = str(Path(str(cfg.data.root)).expanduser().resolve())
    try:
        chosen, skipped = resolve_checkpoints(cfg.ckpt, bool(cfg.get("include_unfinished", False)))
    except NoCheckpointError as err:
        raise VisualizeError(str(err)) from err
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
        "cam_grid": {name: list(mp.grid) for name, mp in maps.items()},
        "not_computed": not_localisable(maps),
        "faithfulness": {}, "shortcut": {}, "localisation": {},
    }
    per_image: dict[str, dict | None] = {}
    for m in models:
        mp = maps[m.name]
        if mp.not_localisable:  # the figure is still drawn; the numbers would be about a constant map
            results["faithfulness"][m.name] = results["shortcut"][m.name] = {"not_computed": mp.not_localisable}
            per_image[m.name] = None
            continue
        drops = faithfulness(m, mp, float(cfg.faithfulness_fraction), int(cfg.seed), int(cfg.batch_size), cfg.layer)
        shares, area = shortcut(m, mp)
        results["faithfulness"][m.name] = {k: {kind: summarize(d) for kind, d in v.items()} for k, v in drops.items()}
        results["shortcut"][m.name] = {"lung_area": summarize(area), "no_lungs_found": int(np.isnan(area).sum()),
                                       # maps with no mass to share (all zero) on images whose lungs were found
                                       "empty_maps": {k: int((np.isnan(v) & ~np.isnan(area)).sum()) for k, v in shares.items()},
                                       **{k: summarize(v) for k, v in shares.items()}}
        per_image[m.name] = {"drops": drops, "shares": shares, "area": area}
    if pairs:
        results["localisation"] = {m.name: {"not_computed": maps[m.name].not_localisable} if maps[m.name].not_localisable
                                   else localisation(m, pairs, methods, target, int(cfg.batch_size), cfg.layer) for m in models}
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
            if pi is None:
                line += [f"{mp.probs[i]:.6f}", mp.categories[i], "n/a"] + ["n/a"] * (3 * len(methods))
                continue
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


def not_localisable(maps: dict) -> dict[str, str]:
    """Models whose CAM layer gives too coarse a map to localise (covidnet.explain.cam.grid_problem), each warned about once:
    their CAM numbers are marked not computed rather than reported as if they meant something."""
    found = {name: mp.not_localisable for name, mp in maps.items() if mp.not_localisable}
    for name, why in found.items():
        warnings.warn(f"visualize: {name}: {why}.", stacklevel=2)
    return found


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
        if name in results["not_computed"]:
            print(f"  {name}: CAM numbers not computed: {results['not_computed'][name]}")
            continue
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


__all__ = ["visualize", "visualize_runs", "default_settings", "VisualizeError", "VISUALIZE", "METHODS"]
