"""The several-sources study of docs/sources.md: COVID-CT only vs COVID-CT + COVID-CT-MD, paired on the same images.

Reads, does not train:
- ``--mixed``: a sweep of ``experiment=sources data.fold=0,1 seed=...``: every COVID-CT-MD patient is held out by
  the fold that tests it, so per seed the two folds' test rows cover all six patients once, each predicted by a
  model that never saw it;
- ``--baseline``: a sweep of the same recipe on COVID-CT alone (same seeds), whose jobs were evaluated on the
  whole COVID-CT-MD sample (``python evaluate.py ckpt=<sweep> eval=covid_ct_md into_runs=true``; none of its
  patients was trained on) and on COVID-SemiSeg (``eval=semiseg``), and the mixed sweep likewise on semiseg.

Writes ``<out>/summary.md`` and ``summary.json``: per arm mean ± std over seeds, and the paired difference
mixed − baseline with two 95 % bootstrap intervals (COVID-CT test images resampled; COVID-CT-MD patients resampled):
over seeds and images, paired by seed (covidnet.metrics.arm_stats.seed_paired_difference), the one behind the verdict; and for
these trained models (images or patients only). ``--margin auroc=0.05`` states an equivalence margin (before the runs).

Also writes ``<out>/predictions.csv``, the P(COVID) of every run on every image the summary uses (no image); the
second command recomputes the same summary from it alone:

    python scripts/studies/sources_study.py --mixed <sweep> --baseline <sweep> --baseline-filter bf16 --out docs/results/sources
    python scripts/studies/sources_study.py --from-predictions --out docs/results/sources
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidnet.metrics import arm_stats, stats
from covidnet.trained.external_summary import margin_arg
from covidnet.rundirs.run_files import EVAL_PREDICTIONS_FILE, read_eval_rows
from covidnet.rundirs.runs import RunDir

MD = "covid_ct_md"
CT_SET = "covid_ct_test"


def seed_of(job: Path) -> int:
    return int(RunDir(job).read_metrics()["seed"])


def jobs(sweep: Path, contains: str = "") -> list[Path]:
    return sorted(j for j in sweep.iterdir() if RunDir(j).metrics_path.is_file() and contains in j.name)


def mixed_predictions(sweep: Path) -> tuple[dict[int, dict[str, float]], dict[int, dict[str, float]], dict[str, dict]]:
    """Per seed: COVID-CT test P(COVID) by file from fold 0's job only (both folds test the same COVID-CT split;
    averaging the two models' probabilities would score an ensemble of two against one baseline model), and
    COVID-CT-MD P(COVID) by slice key from the fold holding it out."""
    ct: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    md: dict[int, dict[str, float]] = defaultdict(dict)
    meta: dict[str, dict] = {}
    for job in jobs(sweep):
        s = seed_of(job)
        for r in RunDir(job).read_prediction_rows():
            if r["source"] == MD:
                key = r["file"].removeprefix(f"{MD}/")
                if key in md[s]:
                    raise SystemExit(f"{job}: {key} is tested by two folds of seed {s}")
                md[s][key] = float(r["prob_covid"])
                meta[key] = {"patient": r["patient"], "label": int(r["label"])}
            elif fold_of(job) == 0:
                ct[s][r["file"]].append(float(r["prob_covid"]))
    return {s: {k: float(np.mean(v)) for k, v in d.items()} for s, d in ct.items()}, dict(md), meta


def fold_of(job: Path) -> int:
    """The job's data.fold, from its saved config."""
    return int((RunDir(job).config().get("data") or {}).get("fold", 0))


def eval_file(job: Path, set_name: str, eval_root: Path | None) -> Path:
    """A job's evaluation on a set: ``<job>/eval/<set>/`` (``into_runs=true``) or ``<eval_root>/<job name>/<set>/``."""
    inside = RunDir(job).eval_dir(set_name) / EVAL_PREDICTIONS_FILE
    return inside if inside.is_file() or eval_root is None else eval_root / job.name / set_name / EVAL_PREDICTIONS_FILE


def baseline_predictions(sweep: Path, contains: str, eval_root: Path | None = None):
    ct, md, meta = {}, {}, {}
    for job in jobs(sweep, contains):
        s = seed_of(job)
        ct[s] = {r["file"]: r["prob_covid"] for r in RunDir(job).read_prediction_rows()}
        if not eval_file(job, MD, eval_root).is_file():
            continue  # not evaluated on COVID-CT-MD (yet): this seed is left out
        ev = read_eval_rows(eval_file(job, MD, eval_root))
        md[s] = {r["path"]: float(r["prob_covid"]) for r in ev}
        for r in ev:
            meta[r["path"]] = {"patient": r["patient"], "label": int(r["label"]), "diagnosis": r["diagnosis"],
                               "slice_label": r["slice_label"]}
    return ct, md, meta


def semiseg(sweep: Path, contains: str = "", eval_root: Path | None = None) -> dict[str, dict[str, float]]:
    """Per job evaluated on COVID-SemiSeg: its P(COVID) by slice."""
    out = {}
    for job in jobs(sweep, contains):
        p = eval_file(job, "semiseg", eval_root)
        if p.is_file():
            out[job.name] = {r["path"]: float(r["prob_covid"]) for r in read_eval_rows(p)}
    return out


def sensitivity(by_job: dict[str, dict[str, float]]) -> list[float]:
    """Per job: sensitivity on COVID-SemiSeg (every slice COVID: the share called COVID at P >= 0.5)."""
    return [float(np.mean([p >= 0.5 for p in probs.values()])) for probs in by_job.values()]


@dataclass
class Inputs:
    """Everything the summary is computed from: per seed and arm P(COVID) by COVID-CT test file and by COVID-CT-MD
    slice (only the seeds and images both arms have), labels and slice metadata, per job the SemiSeg P(COVID), and
    where they were read from. ``predictions.csv`` in the output folder holds exactly this (``write_inputs``)."""

    seeds: list[int]
    ct_label: dict[str, int]
    mix_ct: dict[int, dict[str, float]]
    base_ct: dict[int, dict[str, float]]
    meta: dict[str, dict]  # COVID-CT-MD slice -> patient, label, diagnosis, slice_label
    mix_md: dict[int, dict[str, float]]
    base_md: dict[int, dict[str, float]]
    semiseg: dict[str, dict[str, dict[str, float]]]  # arm -> job -> slice -> P(COVID)
    source: str  # where the inputs were read from, for the summary's header


def from_sweeps(a) -> Inputs:
    """The inputs read from the two sweeps (``--mixed``, ``--baseline``)."""
    mix_ct, mix_md, _ = mixed_predictions(a.mixed)
    base_ct, base_md, meta = baseline_predictions(a.baseline, a.baseline_filter, a.baseline_eval)
    # seeds whose mixed jobs cover every held-out patient (all folds finished) and whose baseline was evaluated
    seeds = sorted(s for s in set(mix_md) & set(base_md) if set(mix_md[s]) == set(base_md[s]))
    if not seeds:
        raise SystemExit("no seed is in both sweeps")
    ct_keys = sorted(set.intersection(*[set(mix_ct[s]) for s in seeds], *[set(base_ct[s]) for s in seeds]))
    md_keys = sorted(set.intersection(*[set(mix_md[s]) for s in seeds], *[set(base_md[s]) for s in seeds]))
    base_rows = RunDir(next(j for j in jobs(a.baseline, a.baseline_filter))).read_prediction_rows()
    ct_label = {r["file"]: r["label"] for r in base_rows}

    def keep(by_seed: dict[int, dict[str, float]], keys: list[str]) -> dict[int, dict[str, float]]:
        return {s: {k: by_seed[s][k] for k in keys} for s in seeds}

    return Inputs(seeds, {k: ct_label[k] for k in ct_keys}, keep(mix_ct, ct_keys), keep(base_ct, ct_keys), {k: meta[k] for k in md_keys},
                  keep(mix_md, md_keys), keep(base_md, md_keys),
                  {"baseline": semiseg(a.baseline, a.baseline_filter, a.baseline_eval), "mixed": semiseg(a.mixed, "", a.mixed_eval)},
                  f"mixed arm: `{a.mixed}`; baseline: `{a.baseline}` (jobs containing `{a.baseline_filter}`)")


PREDICTIONS = "predictions.csv"
META = ("patient", "diagnosis", "slice_label")


def write_inputs(inputs: Inputs, path: Path) -> None:
    """predictions.csv: one row per image (set covid_ct_test, covid_ct_md or semiseg; file name, label, slice metadata),
    one column per run: ``<arm> seed=<s>`` for the COVID-CT and COVID-CT-MD levels, ``<arm> job=<name>`` for SemiSeg."""
    per_seed = {f"{arm} seed={s}": (ct[s], md[s]) for arm, ct, md in (("baseline", inputs.base_ct, inputs.base_md),
                                                                      ("mixed", inputs.mix_ct, inputs.mix_md)) for s in inputs.seeds}
    per_job = {f"{arm} job={job}": probs for arm, by_job in inputs.semiseg.items() for job, probs in by_job.items()}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set", "path", "label", *META, *per_seed, *per_job])
        for k, y in inputs.ct_label.items():
            w.writerow([CT_SET, k, y, "", "", "", *(repr(ct[k]) for ct, _ in per_seed.values()), *([""] * len(per_job))])
        for k, m in inputs.meta.items():
            w.writerow([MD, k, m["label"], *(m[x] for x in META), *(repr(md[k]) for _, md in per_seed.values()), *([""] * len(per_job))])
        for k in dict.fromkeys(k for probs in per_job.values() for k in probs):
            w.writerow(["semiseg", k, 1, "", "", "", *([""] * len(per_seed)), *(repr(p[k]) if k in p else "" for p in per_job.values())])


def recorded_settings(folder: Path) -> dict:
    """The bootstrap resamples and margins an earlier run recorded in ``folder``/summary.json (``{}`` if none)."""
    summary = folder / "summary.json"
    return {k: v for k, v in json.loads(summary.read_text()).items() if k in ("n_boot", "margins")} if summary.is_file() else {}


def read_inputs(folder: Path) -> Inputs:
    """The inputs an earlier run of this script wrote into ``folder`` (predictions.csv; the header from summary.json)."""
    if not (folder / PREDICTIONS).is_file():
        raise SystemExit(f"{folder} holds no {PREDICTIONS}: run with --mixed and --baseline first.")
    with open(folder / PREDICTIONS, newline="") as f:
        table = list(csv.DictReader(f))
    columns = list(table[0]) if table else []
    seeds = sorted({int(c.split(" seed=")[1]) for c in columns if " seed=" in c})

    def by_seed(arm: str, set_name: str) -> dict[int, dict[str, float]]:
        return {s: {r["path"]: float(r[f"{arm} seed={s}"]) for r in table if r["set"] == set_name} for s in seeds}

    semi: dict[str, dict[str, dict[str, float]]] = {"baseline": {}, "mixed": {}}
    for c in columns:
        if " job=" in c:
            arm, job = c.split(" job=", 1)
            semi[arm][job] = {r["path"]: float(r[c]) for r in table if r["set"] == "semiseg" and r[c]}
    meta = {r["path"]: {"label": int(r["label"]), **{x: r[x] for x in META}} for r in table if r["set"] == MD}
    summary = folder / "summary.json"
    source = json.loads(summary.read_text()).get("inputs") if summary.is_file() else None
    return Inputs(seeds, {r["path"]: int(r["label"]) for r in table if r["set"] == CT_SET}, by_seed("mixed", CT_SET),
                  by_seed("baseline", CT_SET), meta, by_seed("mixed", MD), by_seed("baseline", MD), semi,
                  source or f"recomputed from `{PREDICTIONS}`")


def matrix(by_seed: dict[int, dict[str, float]], keys: list[str], seeds: list[int]) -> np.ndarray:
    return np.asarray([[by_seed[s][k] for k in keys] for s in seeds])


def ms(entry: dict, arm: str, metric: str) -> str:
    e = entry[f"{arm}_{metric}"]
    return f"{e['mean']:.3f} ± {e['std']:.3f}" if e["std"] is not None else f"{e['mean']:.3f}"


def seed_cell(si: arm_stats.SeedInterval) -> str:
    return si.text if si.judgeable else f"{si.estimate:+.3f} (not enough seeds)"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mixed", type=Path)
    ap.add_argument("--baseline", type=Path)
    ap.add_argument("--baseline-filter", default="", help="only baseline jobs whose directory name contains this")
    ap.add_argument("--baseline-eval", type=Path, default=None, help="evaluate.py out_dir holding <job name>/<set>/ of the baseline jobs")
    ap.add_argument("--mixed-eval", type=Path, default=None, help="evaluate.py out_dir holding <job name>/semiseg/ of the mixed jobs")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-boot", type=int, help="bootstrap resamples (default 2000; with --from-predictions, as recorded)")
    ap.add_argument("--margin", action="append", metavar="METRIC=VALUE", type=margin_arg,
                    help="equivalence margin stated before the runs, e.g. auroc=0.05 (repeatable; none: no equivalence claim; "
                         "with --from-predictions, as recorded)")
    ap.add_argument("--from-predictions", action="store_true", help=f"recompute from the {PREDICTIONS} a previous run wrote into --out")
    a = ap.parse_args(argv)
    if not a.from_predictions and (a.mixed is None or a.baseline is None):
        ap.error("--mixed and --baseline are required (or --from-predictions)")
    recorded = recorded_settings(a.out) if a.from_predictions else {}
    a.n_boot = a.n_boot if a.n_boot is not None else recorded.get("n_boot", 2000)
    margins = dict(a.margin) if a.margin is not None else recorded.get("margins", {})

    inputs = read_inputs(a.out) if a.from_predictions else from_sweeps(a)
    seeds, meta, mix_ct, base_ct, mix_md, base_md = inputs.seeds, inputs.meta, inputs.mix_ct, inputs.base_ct, inputs.mix_md, inputs.base_md
    ct_keys, md_keys = list(inputs.ct_label), list(meta)
    result: dict = {"inputs": inputs.source, "n_boot": a.n_boot, "margins": margins, "seeds": seeds, "n_covid_ct_test": len(ct_keys), "n_md_slices": len(md_keys), "levels": {}}

    levels = {"COVID-CT test (images)": (ct_keys, np.asarray([inputs.ct_label[k] for k in ct_keys]), None, mix_ct, base_ct)}
    md_labels = np.asarray([meta[k]["label"] for k in md_keys])
    md_groups = [meta[k]["patient"] for k in md_keys]
    levels["COVID-CT-MD held-out slices (patients resampled)"] = (md_keys, md_labels, md_groups, mix_md, base_md)
    for diag in ("CAP", "normal"):
        keep = [i for i, k in enumerate(md_keys) if meta[k]["label"] == 1 or meta[k]["diagnosis"] == diag]
        keys = [md_keys[i] for i in keep]
        levels[f"COVID-CT-MD slices, COVID vs {diag}"] = (keys, md_labels[keep], [md_groups[i] for i in keep], mix_md, base_md)
    inf = [i for i, k in enumerate(md_keys) if meta[k]["label"] == 0 or meta[k]["slice_label"] == "1"]
    levels["COVID-CT-MD infected COVID slices vs non-COVID slices"] = ([md_keys[i] for i in inf], md_labels[inf], [md_groups[i] for i in inf], mix_md, base_md)

    lines = [
        "# Several sources: COVID-CT only vs COVID-CT + COVID-CT-MD", "",
        f"Seeds {seeds}; {inputs.source}. Rebuild from the predictions in this folder: "
        f"`python scripts/studies/sources_study.py --from-predictions --out <this folder>`.",
        "Per arm: the metric per seed, mean ± std. Δ = mixed − baseline, seed-mean metric, 95 % paired bootstrap "
        f"({a.n_boot} resamples; COVID-CT-MD: whole patients, stratified by label). The interval over seeds and images "
        "also resamples the seeds (paired: the same seeds for both arms) and is the one behind the verdict (better / worse: "
        "excludes 0; equivalent: inside a margin stated before the runs"
        + (f", here {', '.join(f'{m} ±{v}' for m, v in margins.items())}" if margins else ", none stated here") +
        "; fewer than 3 seeds: not enough seeds to judge). The one for these trained models resamples images (patients) only.", "",
        "| level | n | baseline AUROC | mixed AUROC | Δ AUROC [95 % CI over seeds and images] | verdict | Δ AUROC for these trained models "
        "| baseline acc | mixed acc | Δ acc [95 % CI over seeds and images] | verdict | Δ acc for these trained models |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (keys, labels, groups, mix, base) in levels.items():
        A, B = matrix(mix, keys, seeds), matrix(base, keys, seeds)
        per = {arm: [stats.binary_metrics(labels, p) for p in P] for arm, P in (("mixed", A), ("baseline", B))}
        # runs_a = baseline, runs_b = mixed: B minus A is mixed − baseline; row i of both is seed seeds[i]
        fixed, seeded = arm_stats.arm_differences(labels, B, A, ("auroc", "acc"), seeds, seeds, n_boot=a.n_boot, groups=groups)
        entry = {"n": len(keys), "n_covid": int(labels.sum()), "patients": len(set(groups)) if groups else None}
        for arm in ("baseline", "mixed"):
            for m in ("auroc", "acc", "sensitivity", "specificity"):
                v = [float(r[m]) for r in per[arm]]
                entry[f"{arm}_{m}"] = {"per_seed": v, "mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else None}
        entry["delta"] = {m: {"estimate": si.estimate, "low": si.low, "high": si.high, "verdict": arm_stats.verdict(si, margins.get(m)),
                              "paired_by_seed": si.paired, "margin": margins.get(m)} for m, si in seeded.items()}
        entry["delta_for_these_trained_models"] = {m: {"estimate": iv.estimate, "low": iv.low, "high": iv.high} for m, iv in fixed.items()}
        result["levels"][name] = entry

        n = f"{len(keys)} ({entry['patients']} patients)" if groups else str(len(keys))
        cells = [n]
        for m in ("auroc", "acc"):
            cells += [ms(entry, "baseline", m), ms(entry, "mixed", m), seed_cell(seeded[m]), entry["delta"][m]["verdict"], stats.signed(fixed[m])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    # per patient: mean slice P(COVID), seed-averaged, each arm
    patients = sorted(set(md_groups))
    lines += ["", "Per COVID-CT-MD patient: mean slice P(COVID) (mean over seeds; mixed arm: the fold that held the patient out).", "",
              "| patient | label | baseline | mixed |", "|---|---|---|---|"]
    result["patients"] = {}
    for p in patients:
        idx = [i for i, g in enumerate(md_groups) if g == p]
        keys = [md_keys[i] for i in idx]
        b = float(matrix(base_md, keys, seeds).mean())
        m = float(matrix(mix_md, keys, seeds).mean())
        result["patients"][p] = {"label": int(md_labels[idx[0]]), "baseline": b, "mixed": m, "slices": len(idx)}
        lines.append(f"| {p} | {int(md_labels[idx[0]])} | {b:.3f} | {m:.3f} |")

    sb, sm = sensitivity(inputs.semiseg["baseline"]), sensitivity(inputs.semiseg["mixed"])
    result["semiseg_sensitivity"] = {"baseline": sb, "mixed": sm}
    if sb and sm:
        lines += ["", f"COVID-SemiSeg sensitivity (50 COVID slices, P >= 0.5; per job): baseline {np.mean(sb):.3f} ± "
                  f"{np.std(sb, ddof=1) if len(sb) > 1 else 0:.3f} ({len(sb)} jobs), mixed {np.mean(sm):.3f} ± "
                  f"{np.std(sm, ddof=1) if len(sm) > 1 else 0:.3f} ({len(sm)} jobs)."]
    a.out.mkdir(parents=True, exist_ok=True)
    write_inputs(inputs, a.out / PREDICTIONS)
    (a.out / "summary.md").write_text("\n".join(lines) + "\n")
    (a.out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
