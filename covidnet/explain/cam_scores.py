"""The CAM numbers of one model on a list of images: its maps (:func:`compute_maps`), how faithful they are
(:func:`faithfulness`), how much of them falls on the lung field (:func:`shortcut`) and on lesions
(:func:`localisation`). See docs/cam.md for what each number rules out.

The per-map measures themselves (mass share, pointing game, removal drops, random controls, summaries) are
:mod:`covidnet.explain.cam_metrics`; this module runs them over a model's images, through the preprocessing the model
was trained with. :mod:`covidnet.trained.visualization` (what visualize.py runs) chooses models and images and writes the results; the
figure is :mod:`covidnet.explain.cam_figure`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from covidnet.models.archs import LAYER_STRIDES
from covidnet.explain.cam import cam_grid, categories_for, compute_cams, grid_problem
from covidnet.explain.cam_metrics import block_random_cams, confidence_drop, mass_share, pixel_random_cams, pointing_hit, summarize
from covidnet.images.covid_ct_layout import load_grey
from covidnet.models.predict import predict_batch
from covidnet.images.sources.base import SourceError


class ScoredModel(Protocol):
    """What the numbers need of a model rebuilt from its checkpoint (visualize's ``LoadedModel``): the network, and
    the data module whose preprocessing (``prepare_file``, ``preprocess``, ``spec``) it was trained with."""

    model: torch.nn.Module
    datamodule: Any


@dataclass
class Maps:
    """One model on a list of images: inputs, P(COVID), target categories and a map per method."""

    x: torch.Tensor
    probs: np.ndarray
    categories: list[int]
    cams: dict[str, np.ndarray] = field(default_factory=dict)
    lungs: list[np.ndarray | None] = field(default_factory=list)  # lung field in each input (None: not found)
    grid: tuple[int, int] = (0, 0)  # the CAM layer's map (cells), what a map can resolve
    not_localisable: str | None = None  # why no CAM number is computed on these maps (covidnet.explain.cam.grid_problem)


def batches(n: int, size: int):
    """Slices of ``size`` (the last one shorter) over ``n`` images: memory stays bounded by the batch size."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def compute_maps(m: ScoredModel, paths: list[Path], labels: list[int], methods: list[str], target: str, batch_size: int, layer: str) -> Maps:
    """Every image through the model's own preprocessing (lung field kept for the shortcut share), its P(COVID),
    the target category per image (``target``: label or prediction) and one map per method."""
    prepared = [m.datamodule.prepare_file(p, lung_mask=True) for p in paths]
    x = torch.stack([m.datamodule.preprocess(pp.image) for pp in prepared])
    probs = torch.cat([predict_batch(m.model, x[s]) for s in batches(len(x), batch_size)]).numpy()
    categories = categories_for(target, labels, probs.tolist())
    maps = Maps(x, probs, categories, lungs=[pp.lung_mask.numpy() if pp.lung_mask is not None else None for pp in prepared])
    maps.grid = cam_grid(m.model, x, layer)
    maps.not_localisable = grid_problem(maps.grid, layer)
    for method in methods:
        maps.cams[method] = np.concatenate([compute_cams(m.model, x[s], method, categories[s], layer) for s in batches(len(x), batch_size)])
    return maps


def faithfulness(m: ScoredModel, maps: Maps, fraction: float, seed: int, batch_size: int, layer: str = "layer4") -> dict[str, dict[str, np.ndarray]]:
    """Per map and per control, each image's drop in P(target) and in the target logit when ``fraction`` of
    the pixels is removed by the map: most relevant first (``prob_drop``, ``logit_drop``) and least relevant
    first (``lerf_prob_drop``, ``lerf_logit_drop``). Controls: ``block_random`` (random maps on the CAM's
    own grid, upsampled like a CAM: the chance level) and ``pixel_random`` (pixel-independent noise, which
    ROAD's imputation undoes; a reference only). docs/cam.md says what each rules out."""
    shape = next(iter(maps.cams.values())).shape
    per_map = dict(maps.cams)
    per_map["block_random"] = block_random_cams(shape, LAYER_STRIDES.get(layer, 32), seed)
    per_map["pixel_random"] = pixel_random_cams(shape, seed)
    out = {}
    for name, cams in per_map.items():
        out[name] = {}
        for order, prefix in (("morf", ""), ("lerf", "lerf_")):
            parts = [confidence_drop(m.model, maps.x[s], cams[s], maps.categories[s], fraction, seed, order) for s in batches(len(maps.x), batch_size)]
            out[name][f"{prefix}prob_drop"] = np.concatenate([p for p, _ in parts])
            out[name][f"{prefix}logit_drop"] = np.concatenate([g for _, g in parts])
    for name in maps.cams:  # paired on the same images: the map minus the structured control
        for kind in ("prob_drop", "logit_drop", "lerf_prob_drop", "lerf_logit_drop"):
            out[name][f"{kind}_minus_block_random"] = out[name][kind] - out["block_random"][kind]
    return out


def shortcut(m: ScoredModel, maps: Maps) -> tuple[dict, np.ndarray]:
    """Per method, each image's share of CAM mass inside the lung field (covidnet/images/lungs.py, segmented on the
    file at its own resolution and carried into the network input's frame); and each image's lung-field
    area share, what a uniform map would give. NaN where no lung field was found."""
    area = np.array([float(lung.mean()) if lung is not None else np.nan for lung in maps.lungs])
    shares = {
        method: np.array([mass_share(c, lung) if lung is not None else np.nan for c, lung in zip(cams, maps.lungs)])
        for method, cams in maps.cams.items()
    }
    return shares, area


def lesion_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """covid-semiseg layout: images/N.jpg with masks/N.png. A folder not so laid out is a SourceError (an image set
    on disk that cannot be read as asked; visualize.py reports it as its own setting error)."""
    folder = Path(folder).expanduser()
    images, masks = folder / "images", folder / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise SourceError(f"localize={folder}: expected images/ and masks/ folders there (COVID-SemiSeg layout: images/N.jpg, masks/N.png).")
    by_stem = {p.stem: p for p in masks.iterdir() if p.is_file()}
    pairs = [(p, by_stem[p.stem]) for p in sorted(images.iterdir(), key=lambda p: p.name) if p.is_file() and p.stem in by_stem]
    if not pairs:
        raise SourceError(f"localize={folder}: no image in images/ has a mask of the same name in masks/.")
    return pairs


def localisation(m: ScoredModel, pairs, methods: list[str], target: str, batch_size: int, layer: str) -> dict:
    """Pointing game and CAM mass inside the lesion on COVID slices with infection masks (all label 1)."""
    maps = compute_maps(m, [p for p, _ in pairs], [1] * len(pairs), methods, target, batch_size, layer)
    # each lesion mask in its slice's input frame: the same lung crop and resize as the slice
    size = m.datamodule.spec.image_size
    lesions = [m.datamodule.prepare_file(img, lung_mask=True).carry(load_grey(mask), size)[0].numpy() >= 128 for img, mask in pairs]
    chance = [float(les.mean()) for les in lesions]
    lung_area = [float(lung.mean()) if lung is not None else np.nan for lung in maps.lungs]
    out = {"n_slices": len(pairs), "lesion_area_share": summarize(chance), "P(COVID)": summarize(maps.probs),
           "sensitivity": summarize([float(p >= 0.5) for p in maps.probs]), "lung_area": summarize(lung_area),
           "targets": {"COVID": int(sum(maps.categories)), "non-COVID": int(len(pairs) - sum(maps.categories))}}
    out["grid"] = list(maps.grid)  # the CAM layer's cells: what a map can resolve
    for method in methods:
        cams = maps.cams[method]
        hits = [float(pointing_hit(c, les)) for c, les in zip(cams, lesions)]
        in_lesion = [mass_share(c, les) for c, les in zip(cams, lesions)]  # NaN for an empty (all-zero) map
        out[method] = {
            "pointing_game_hit_rate": summarize(hits),
            "mass_in_lesion": summarize(in_lesion),
            "mass_in_lungs": summarize([mass_share(c, lung) if lung is not None else np.nan for c, lung in zip(cams, maps.lungs)]),
            # every mean above says how many maps it is over: an empty map has no mass to share (GradCAM of a class the
            # model does not see) and points nowhere (a miss)
            "empty_maps": int(sum(float(np.max(c)) <= 0 for c in cams)),
            # per slice, in pairs order: for intervals over runs and slices (covidnet.metrics.arm_stats.seed_mean_difference)
            "per_slice": {"pointing_game_hit": hits, "mass_in_lesion": [None if np.isnan(v) else round(v, 6) for v in in_lesion]},
        }
    return out
