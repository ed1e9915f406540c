"""In-split against external numbers, for groups of runs taken from any sweeps (docs/external.md, docs/results.md).

Reads, does not train or evaluate: each run's metrics.json (in-split test) and ``eval/<set>/`` (written by training
with ``eval_sets=[...]`` or by ``evaluate.py ... into_runs=true``). Per group: mean ± std over its runs (seeds) of
in-split test AUROC and accuracy (203 official test images), covid_ct_md slice AUROC (all, COVID vs normal,
COVID vs CAP), patient AUROC (mean and top-k mean slice P(COVID)), semiseg sensitivity and mean P(COVID). Then
covidnet.external_summary's per-set tables and the paired differences asked for (``--pair arm:ref``: on the same
external images, patients resampled where the set has them): the interval over seeds and images behind the verdict,
and the one for these trained models (``--margin auroc=0.05``: an equivalence margin stated before the runs).

    python scripts/studies/external_study.py --group "scratch=runs/lungs/data.field=full,data.source_aug=none,*" \\
        --group "ct=runs/frozen/init=ct,model.freeze=up_to_layer4,*" --pair ct:scratch
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

from covidnet import stats
from covidnet.external_summary import estimate, eval_sets_of, external_lines, margin_arg, read_eval
from covidnet.run_dir import RunDir


def columns(run: Path) -> dict[str, float]:
    rd = RunDir(run)
    test = rd.read_metrics()["test"]
    md, ss = (read_eval(run, name)[0] if name in eval_sets_of(run) else {} for name in ("covid_ct_md", "semiseg"))
    patients = md.get("patients", {})
    topk = next((k for k in patients if k != "mean"), None)
    return {
        "in-split AUROC": test["test/auroc"],
        "in-split acc": test["test/acc"],
        "MD slice AUROC": estimate(md.get("images", {}).get("all"), "auroc"),
        "MD COVID vs normal": estimate(md.get("images", {}).get("COVID vs normal"), "auroc"),
        "MD COVID vs CAP": estimate(md.get("images", {}).get("COVID vs CAP"), "auroc"),
        "MD slice sensitivity": estimate(md.get("images", {}).get("all"), "sensitivity"),
        "MD slice specificity": estimate(md.get("images", {}).get("all"), "specificity"),
        "MD patient AUROC (mean)": estimate(patients.get("mean", {}).get("all"), "auroc"),
        f"MD patient AUROC ({topk or 'top-k'})": estimate(patients.get(topk, {}).get("all"), "auroc") if topk else float("nan"),
        "SemiSeg sensitivity": estimate(ss.get("images", {}).get("all"), "sensitivity"),
        "SemiSeg mean P(COVID)": estimate(ss.get("images", {}).get("all"), "mean_prob_covid"),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group", action="append", required=True, help="label=glob of run directories")
    p.add_argument("--pair", action="append", default=[], help="arm:reference (group labels)")
    p.add_argument("--out", type=Path, help="also write the markdown here")
    p.add_argument("--margin", action="append", default=[], metavar="METRIC=VALUE", type=margin_arg,
                   help="equivalence margin stated before the runs, e.g. auroc=0.05 (repeatable)")
    args = p.parse_args(argv)
    groups: dict[str, list[Path]] = {}
    for spec in args.group:
        label, pattern = spec.split("=", 1)
        runs = sorted(Path(x) for x in glob.glob(pattern) if RunDir(x).read_metrics())
        if not runs:
            raise SystemExit(f"--group {label}: no finished run matches {pattern}")
        groups[label] = runs
    table = {label: [columns(r) for r in runs] for label, runs in groups.items()}
    names = list(next(iter(table.values()))[0])
    lines = ["| group | runs | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for label, rows in table.items():
        cells = []
        for n in names:
            m, sd = stats.mean_std([r[n] for r in rows])
            cells.append(f"{m:.3f} ± {sd:.3f}" if sd == sd else f"{m:.3f}")
        lines.append(f"| {label} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += ["", "± = std over the group's runs (seeds). In-split: 203 official test images; MD: covid_ct_md (297 slices of 6 "
              "patients); SemiSeg: 50 COVID slices. Runs:", ""]
    lines += [f"- {label}: " + ", ".join(str(r) for r in runs) for label, runs in groups.items()]
    lines += ["", *external_lines(groups, [tuple(x.split(":", 1)) for x in args.pair], margins=dict(args.margin))]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
