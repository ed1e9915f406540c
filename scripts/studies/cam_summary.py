"""Per-arm CAM numbers on COVID-SemiSeg from a visualize.py results.json: mean ± std over the runs of each init.

    python scripts/studies/cam_summary.py docs/results/lite/cams/results.json

Each run's numbers are already means over the 50 SemiSeg slices (visualize.py ``localize=``); the arm of a run is
the ``init=`` in its name. Chance levels: a map spread evenly puts the lesions' area share on them (and the lung
field's share inside the lungs); the pointing game's chance is the lesion area share too.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

KEYS = ("mass_in_lesion", "pointing_game_hit_rate", "mass_in_lungs")


def summarize(results: dict) -> str:
    loc = results["localisation"]
    arms: dict[str, list[dict]] = {}
    for name, v in loc.items():
        arms.setdefault(re.search(r"init=(\w+)", name).group(1), []).append(v)
    first = next(iter(loc.values()))
    lines = [f"SemiSeg slices: {first['n_slices']}; lesion area share {first['lesion_area_share']['mean']:.3f}, "
             f"lung area share {first['lung_area']['mean']:.3f} (the chance levels)", "",
             "| init | runs | method | mass in lesion | pointing game | mass in lungs |", "|---|---|---|---|---|---|"]
    for arm, runs in sorted(arms.items()):
        for method in results["methods"]:
            cells = []
            for k in KEYS:
                xs = [r[method][k]["mean"] for r in runs]
                cells.append(f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}")
            lines.append(f"| {arm} | {len(runs)} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(json.loads(Path(sys.argv[1]).read_text())))
