"""Does the hardware default (bf16-mixed + channels-last on our CPU) cost accuracy? Paired on the same test images.

Reads predictions_test.csv of the runs of two arms (one run directory per seed), checks that they hold the
same images with the same labels, and prints the paired percentile-bootstrap intervals (covidnet.metrics.stats,
2000 resamples over the test images, seed 0) of test AUROC and accuracy, arm A minus arm B:
  1. pre-registered (COORD.md, 05:52 UTC, before any result was read): on the seed-averaged P(COVID) of each
     arm; equivalent if the AUROC interval lies inside +-0.05 and the accuracy interval inside +-0.06;
  2. the mean over seeds of each seed's metric (covidnet.metrics.arm_stats.paired_difference, as a sweep report does);
  3. each seed against the same seed of arm B.

    python scripts/studies/precision_equivalence.py --a runs/lungs --a-filter data.field=full,data.source_aug=none --b runs/fp32
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from covidnet.metrics.arm_stats import paired_difference
from covidnet.rundirs.runs import RunDir

MARGINS = {"auroc": 0.05, "acc": 0.06}


def read_runs(sweep: Path, must_contain: str) -> dict[int, tuple[list[str], np.ndarray, np.ndarray]]:
    runs = {}
    for d in sorted(p for p in sweep.iterdir() if p.is_dir() and must_contain in p.name):
        rows = RunDir(d).read_prediction_rows()
        if not rows:
            continue
        seed = int(re.search(r"seed=(\d+)", d.name).group(1))
        runs[seed] = ([r["file"] for r in rows], np.array([r["label"] for r in rows]), np.array([r["prob_covid"] for r in rows]))
    return runs


def show(name: str, intervals: dict, margins: dict | None = None) -> None:
    parts = []
    for m, iv in intervals.items():
        verdict = ""
        if margins:
            verdict = " inside" if -margins[m] < iv.low and iv.high < margins[m] else " NOT inside"
            verdict += f" +-{margins[m]}"
        parts.append(f"{m} {iv.estimate:+.4f} [{iv.low:+.4f}, {iv.high:+.4f}]{verdict}")
    print(f"| {name} | " + " | ".join(parts) + " |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", type=Path, required=True, help="sweep dir of arm A (the new default)")
    p.add_argument("--b", type=Path, required=True, help="sweep dir of arm B (fp32)")
    p.add_argument("--a-filter", default="", help="keep only job dirs whose name contains this")
    p.add_argument("--b-filter", default="", help="keep only job dirs whose name contains this")
    args = p.parse_args(argv)
    a, b = read_runs(args.a, args.a_filter), read_runs(args.b, args.b_filter)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise SystemExit("No seed has predictions in both arms.")
    files, labels, _ = a[seeds[0]]
    for s in seeds:
        for arm in (a, b):
            if arm[s][0] != files or not np.array_equal(arm[s][1], labels):
                raise SystemExit(f"seed {s}: the arms' predictions are not on the same images in the same order")
    pa = np.stack([a[s][2] for s in seeds])
    pb = np.stack([b[s][2] for s in seeds])
    print(f"# A = {args.a} {args.a_filter} | B = {args.b} {args.b_filter} | seeds {seeds} | {labels.size} test images "
          f"({int(labels.sum())} COVID) | paired bootstrap, 2000 resamples of the images, 95 % percentile intervals")
    print("| comparison (A - B) | AUROC | accuracy |")
    print("|---|---|---|")
    show("pre-registered: seed-averaged P(COVID)", paired_difference(labels, pa.mean(0), pb.mean(0)), MARGINS)
    show("mean of the per-seed metrics", paired_difference(labels, pa, pb))
    for i, s in enumerate(seeds):
        show(f"seed {s}", paired_difference(labels, pa[i], pb[i]))


if __name__ == "__main__":
    main()
