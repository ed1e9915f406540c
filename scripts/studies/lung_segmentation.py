"""Measure covidnet/images/lungs.py: Dice on lung-masks-64 (test), lesion pixels inside the lung field on
COVID-SemiSeg, failures on COVID-CT. Writes a JSON summary (docs/results/lungs/segmentation.json).

    python scripts/studies/lung_segmentation.py --data ../shared/data --out docs/results/lungs/segmentation.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from covidnet.images.covid_ct_layout import load_grey
from covidnet.images.lungs import MIN_AREA, dice, segment_lungs


def lung_masks_64(root: Path, split: str) -> dict:
    x = np.load(root / f"x_{split}.npy")[..., 0]
    y = np.load(root / f"y_{split}.npy")[..., 0] >= 0.5
    scores, failed = [], []
    for i in range(len(x)):
        m = segment_lungs(x[i])
        if m is None:
            failed.append(i)
            m = np.zeros_like(y[i])
        scores.append(dice(m, y[i]))
    s = np.asarray(scores)
    return {"split": split, "n": len(s), "dice_mean": round(float(s.mean()), 4), "dice_median": round(float(np.median(s)), 4),
            "dice_min": round(float(s.min()), 4), "dice_below_0.8": int((s < 0.8).sum()), "failed": failed}


def semiseg(root: Path) -> dict:
    inside = total = 0
    per, failed = [], []
    for img in sorted((root / "images").iterdir(), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem):
        lesion = load_grey(root / "masks" / f"{img.stem}.png") >= 0.5
        m = segment_lungs(load_grey(img))
        if m is None:
            failed.append(img.name)
            m = np.zeros_like(lesion)
        a, b = int((lesion & m).sum()), int(lesion.sum())
        inside, total = inside + a, total + b
        per.append(a / b if b else float("nan"))
    per = np.asarray(per)
    return {"n": len(per), "lesion_pixels_inside_share": round(inside / total, 4),
            "per_slice_mean": round(float(np.nanmean(per)), 4), "per_slice_min": round(float(np.nanmin(per)), 4),
            "slices_below_0.9": int((per < 0.9).sum()), "failed": failed}


def covid_ct(root: Path) -> dict:
    folder = root / "Images-processed"
    failed, areas, n = [], [], 0
    for path in sorted(p for p in folder.glob("*/*") if p.is_file()):
        n += 1
        m = segment_lungs(load_grey(path))
        if m is None:
            failed.append(f"{path.parent.name}/{path.name}")
        else:
            areas.append(float(m.mean()))
    return {"n": n, "failed": len(failed), "failure_rate": round(len(failed) / n, 4), "min_area": MIN_AREA,
            "area_mean": round(float(np.mean(areas)), 4), "failed_files": failed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="../shared/data", help="folder holding lung-masks-64, covid-semiseg, covid-ct")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    data = Path(args.data)
    start = time.time()
    out = {
        "lung_masks_64_test": lung_masks_64(data / "lung-masks-64", "test"),
        "lung_masks_64_train": lung_masks_64(data / "lung-masks-64", "train"),
        "covid_semiseg": semiseg(data / "covid-semiseg"),
        "covid_ct": covid_ct(data / "covid-ct"),
        "machine": f"{platform.processor() or platform.machine()}, CPU",
    }
    out["seconds"] = round(time.time() - start, 1)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
