"""In-split against external numbers, for groups of runs taken from any sweeps (docs/external.md, docs/results.md).

Reads, does not train or evaluate: each run's metrics.json (in-split test) and ``eval/<set>/`` (written by training
with ``eval_sets=[...]`` or by ``evaluate.py ... into_runs=true``). Per group: mean ± std over its runs (seeds) of
in-split test AUROC and accuracy (203 official test images), covid_ct_md slice AUROC (all, COVID vs normal,
COVID vs CAP), patient AUROC (mean and top-k mean slice P(COVID)), semiseg sensitivity and mean P(COVID). Then
covidnet.trained.external_summary's per-set tables and the paired differences asked for (``--pair arm:ref``: on the same
external images, patients resampled where the set has them): the interval over seeds and images behind the verdict,
and the one for these trained models (``--margin auroc=0.05``: an equivalence margin stated before the runs).

    python scripts/studies/external_study.py --group "scratch=runs/lungs/data.field=full,data.source_aug=none,*" \\
        --group "ct=runs/frozen/init=ct,model.freeze=up_to_layer4,*" --pair ct:scratch --out docs/results/external_summary.md

With ``--out``, the predictions behind the tables (covidnet.report.bundle: file, label, P(COVID) per run, in-split and
external; each run's metrics.json numbers) go into the folder named as the file without ``.md``, from which

    python scripts/studies/external_study.py --from-predictions docs/results/external_summary --out docs/results/external_summary.md

recomputes the same file without the runs.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

from covidnet.metrics import stats
from covidnet.trained.external_summary import estimate, external_lines, margin_arg
from covidnet.report.bundle import load_bundle, read_options, write_bundle
from covidnet.report.sweep import Run, Sweep, read_job
from covidnet.rundirs.runs import RunDir


def columns(metrics: dict, evals: dict[str, tuple[dict, list[dict]]]) -> dict[str, float]:
    """One run's numbers: from its metrics.json (``test``: what training logged) and its external sets' metrics.json."""
    test = metrics["test"]
    md, ss = (evals[name][0] if name in evals else {} for name in ("covid_ct_md", "semiseg"))
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


def run_of(job: Path, group: str) -> Run:
    """A run directory as the report reads it, named and grouped for this study (names unique across sweeps)."""
    run = read_job(job, job.parent, {})
    run.name, run.params = f"{group}/{job.name}", {"group": group}
    return run


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group", action="append", default=[], help="label=glob of run directories")
    p.add_argument("--pair", action="append", default=[], help="arm:reference (group labels)")
    p.add_argument("--out", type=Path, help="also write the markdown here, and the predictions behind it into <out without .md>/")
    p.add_argument("--from-predictions", type=Path, metavar="FOLDER",
                   help="recompute from the predictions an earlier --out wrote into FOLDER (groups, pairs and margins as recorded)")
    p.add_argument("--n-boot", type=int, help=f"bootstrap resamples (default {stats.DEFAULT_BOOT}; with --from-predictions, as recorded)")
    p.add_argument("--margin", action="append", metavar="METRIC=VALUE", type=margin_arg,
                   help="equivalence margin stated before the runs, e.g. auroc=0.05 (repeatable)")
    args = p.parse_args(argv)
    if args.from_predictions:
        sweep = load_bundle(args.from_predictions)
        recorded = read_options(args.from_predictions)
        groups = {label: [r for r in sweep.runs if r.params["group"] == label] for label in recorded["groups"]}
        named = recorded["groups"]
        pairs = [tuple(x) for x in recorded["pairs"]]
        margins = recorded["margins"] if args.margin is None else dict(args.margin)
        n_boot = recorded["n_boot"] if args.n_boot is None else args.n_boot
    else:
        if not args.group:
            p.error("--group is required (or --from-predictions)")
        groups, named = {}, {}
        for spec in args.group:
            label, pattern = spec.split("=", 1)
            dirs = sorted(Path(x) for x in glob.glob(pattern) if RunDir(x).read_metrics())
            if not dirs:
                raise SystemExit(f"--group {label}: no finished run matches {pattern}")
            named[label] = [str(d) for d in dirs]
            groups[label] = [run_of(d, label) for d in dirs]
        pairs = [tuple(x.split(":", 1)) for x in args.pair]
        margins = dict(args.margin or [])
        n_boot = stats.DEFAULT_BOOT if args.n_boot is None else args.n_boot
    table = {label: [columns(r.metrics, r.eval_results()) for r in runs] for label, runs in groups.items()}
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
    lines += [f"- {label}: " + ", ".join(dirs) for label, dirs in named.items()]
    lines += ["", *external_lines(groups, pairs, n_boot, margins=margins)]
    if args.out:
        folder = args.from_predictions or args.out.with_suffix("")
        lines += ["", f"Recompute from the predictions in `{folder.name}/` beside this file: "
                  f"`python scripts/studies/external_study.py --from-predictions {folder} --out {args.out}`."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        runs = [r for rs in groups.values() for r in rs]
        folder.mkdir(parents=True, exist_ok=True)
        write_bundle(Sweep(folder, "", runs, ["group"]), folder,
                     {"groups": named, "pairs": [list(x) for x in pairs], "margins": margins, "n_boot": n_boot})


if __name__ == "__main__":
    main()
