"""Per-arm CAM numbers on COVID-SemiSeg from a visualize.py results.json: mean ± std over the runs of each init.

    python scripts/studies/cam_summary.py docs/results/lite/cams/results.json

Each run's numbers are already means over the 50 SemiSeg slices (visualize.py ``localize=``); the arm of a run is
the ``init=`` in its name. Empty (all-zero) maps are counted beside every mean (the lesion mass is a mean over the
others), and where the per-slice values were recorded each arm minus scratch gets the interval over seeds and slices. Chance levels: a map spread evenly puts the lesions' area share on them (and the lung
field's share inside the lungs); the pointing game's chance is the lesion area share too.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

import numpy as np

from covidnet.metrics.arm_stats import seed_mean_difference, verdict

KEYS = ("mass_in_lesion", "pointing_game_hit_rate", "mass_in_lungs")


def seed_of(name: str) -> int:
    found = re.search(r"seed=(\d+)", name)
    return int(found.group(1)) if found else 0


def summarize(results: dict, n_boot: int = 2000) -> str:
    """One row per arm and method (mean ± std over runs, the maps the means are over, the grid), then each arm minus
    scratch with the 95 % interval over runs (paired by seed) and slices, where the per-slice values were recorded."""
    loc = {name: v for name, v in results["localisation"].items() if "not_computed" not in v}
    arms: dict[str, list[tuple[str, dict]]] = {}
    for name, v in sorted(loc.items(), key=lambda kv: seed_of(kv[0])):
        arms.setdefault(re.search(r"init=(\w+)", name).group(1), []).append((name, v))
    first = next(iter(loc.values()))
    grid = f"{'x'.join(map(str, first['grid']))} cells" if first.get("grid") else "not recorded"
    lines = [f"SemiSeg slices: {first['n_slices']}; lesion area share {first['lesion_area_share']['mean']:.3f}, "
             f"lung area share {first['lung_area']['mean']:.3f} (the chance levels); CAM grid: {grid}", "",
             "| init | runs | method | mass in lesion | pointing game | mass in lungs | empty maps |", "|---|---|---|---|---|---|---|"]
    for arm, runs in sorted(arms.items()):
        for method in results["methods"]:
            cells = []
            for k in KEYS:
                xs = [r[method][k]["mean"] for _, r in runs]
                cells.append(f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}")
            # an empty map is the one undefined lesion mass: older results without the count still give it
            empty = [r[method].get("empty_maps", r["n_slices"] - r[method]["mass_in_lesion"]["n"]) for _, r in runs]
            cells.append(f"{sum(empty)} of {len(runs) * first['n_slices']}")
            lines.append(f"| {arm} | {len(runs)} | {method} | " + " | ".join(cells) + " |")
    lines += differences(arms, results["methods"], n_boot)
    return "\n".join(lines)


def differences(arms: dict[str, list[tuple[str, dict]]], methods: list[str], n_boot: int) -> list[str]:
    """Each init minus scratch: mass in the lesion (over the non-empty maps) and the pointing game, B − A with the
    interval over runs and slices (covidnet.metrics.arm_stats.seed_mean_difference) and its verdict (no margin: no equivalence)."""
    if "scratch" not in arms:
        return []
    out = []
    for arm in sorted(a for a in arms if a != "scratch"):
        for method in methods:
            for key, label in (("mass_in_lesion", "mass in lesion"), ("pointing_game_hit", "pointing game")):
                per = [[r[method].get("per_slice", {}).get(key) for _, r in runs] for runs in (arms["scratch"], arms[arm])]
                if any(v is None for side in per for v in side):
                    continue
                a, b = ([[np.nan if x is None else x for x in v] for v in side] for side in per)
                iv = seed_mean_difference(a, b, key, n_boot=n_boot, paired=len(a) == len(b))
                out.append(f"- {arm} − scratch, {method}, {label}: {iv.text} over seeds and slices: {verdict(iv)}")
    return ["", *out] if out else []


if __name__ == "__main__":
    print(summarize(json.loads(Path(sys.argv[1]).read_text())))
