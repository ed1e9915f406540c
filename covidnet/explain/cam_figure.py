"""The CAM figure: one row per drawn image, its input, then per model and method the map over it with the
model's P(COVID) and the map's target (the panel primitives are :mod:`covidnet.explain.cam`; the numbers,
:mod:`covidnet.explain.cam_scores`)."""

from __future__ import annotations

import textwrap
from typing import Any

from covidnet.explain.cam import caption, grey_rgb, overlay, panel_grid, target_text
from covidnet.explain.cam_scores import Maps
from covidnet.images.covid_ct_layout import CLASS_NAMES, Sample


def draw(models: list[Any], maps: dict[str, Maps], rows: list[int], samples: list[Sample], methods: list[str], target: str, title: str):
    """The figure as an RGB array: ``rows`` index ``samples`` (and every model's ``maps``); ``models`` are visualize's
    LoadedModel (``name``, and the ``datamodule`` whose preprocessing turns an input back into grey)."""
    first = models[0]
    greys = {m.name: m.datamodule.preprocess.to_grey(maps[m.name].x[rows]).numpy() for m in models}
    panels = []
    for r, i in enumerate(rows):
        s = samples[i]
        row = [(grey_rgb(greys[first.name][r]), f"{s.name if len(s.name) <= 26 else '...' + s.name[-23:]}\ntrue: {CLASS_NAMES[s.label]}")]
        for m in models:
            mp = maps[m.name]
            for method in methods:
                text = f"{caption(s.label, float(mp.probs[i]))}\n{target_text(method, mp.categories[i], target)}"
                row.append((overlay(greys[m.name][r], mp.cams[method][i]), text))
        panels.append(row)
    labels = column_labels([m.name for m in models])
    columns = ["input"] + [f"{label}\n{method}" for label in labels for method in methods]
    return panel_grid(panels, columns, title=title)


def column_labels(names: list[str], width: int = 24) -> list[str]:
    """Figure column headers: what distinguishes each model within the figure, wrapped to ``width`` characters.

    Sweep job names (``data.image_size=64,init=scratch,trainer.max_epochs=1``) lose the ``key=value`` parts
    all models share (``init=scratch`` vs ``init=imagenet`` remains); the full names are in images.csv and
    results.json. ``width`` fits the narrowest panel (160 px) in the default 11 px font.
    """
    parts = [name.split(",") if "=" in name else [name] for name in names]
    common = set.intersection(*(set(p) for p in parts)) if len(parts) > 1 else set()
    labels = []
    for name, these in zip(names, parts):
        kept = [p for p in these if p not in common] or [name]
        lines: list[str] = []
        for part in kept:
            for piece in textwrap.wrap(part, width) or [part]:
                if lines and len(lines[-1]) + 2 + len(piece) <= width:
                    lines[-1] += f", {piece}"
                else:
                    lines.append(piece)
        labels.append("\n".join(lines))
    return labels
