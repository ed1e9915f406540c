"""Paired comparison of two sweeps' test predictions: arm A minus arm B, seed-mean metrics,
percentile bootstrap over the test images (covidnet.metrics.arm_stats.paired_difference). Only runs present in both arms
by seed are paired; each arm's run list is printed.

    python scripts/studies/compare_sweeps.py --a 'runs/lungs/data.field=lung_crop,data.source_aug=none,*/predictions_test.csv' \
        --b 'runs/lungs/data.field=full,data.source_aug=none,*/predictions_test.csv'
"""

from __future__ import annotations

import argparse
import glob
import json
import re

import numpy as np

from covidnet.metrics import arm_stats, stats
from covidnet.rundirs.run_files import read_prediction_rows


def read(path: str) -> dict[str, tuple[int, float]]:
    return {r["file"]: (r["label"], r["prob_covid"]) for r in read_prediction_rows(path)}


def seed_of(path: str) -> int:
    return int(re.search(r"seed=(\d+)", path).group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    args = ap.parse_args()
    a = {seed_of(p): read(p) for p in glob.glob(args.a, recursive=True)}
    b = {seed_of(p): read(p) for p in glob.glob(args.b, recursive=True)}
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise SystemExit(f"no common seeds: A {sorted(a)}, B {sorted(b)}")
    files = sorted(a[seeds[0]])
    labels = np.array([a[seeds[0]][f][0] for f in files])
    pa = np.array([[a[s][f][1] for f in files] for s in seeds])
    pb = np.array([[b[s][f][1] for f in files] for s in seeds])
    out = {"seeds": seeds, "n_images": len(files)}
    for name, p in (("A", pa), ("B", pb)):
        per = [stats.binary_metrics(labels, row) for row in p]
        out[name] = {m: [round(float(r[m]), 4) for r in per] for m in ("auroc", "acc")}
    diff = arm_stats.paired_difference(labels, pa, pb)
    out["A_minus_B"] = {m: {"estimate": round(iv.estimate, 4), "low": round(iv.low, 4), "high": round(iv.high, 4)} for m, iv in diff.items()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
