"""ImageNet vs scratch on EfficientNet-Lite0 at full budget (``experiment=lite224``), as planned in docs/field.md.

One job at a time; every step whose files exist is skipped, and an interrupted training job continues from its last
checkpoint, so a stopped study resumes where it stopped.

1. **Learning rate per arm on validation only** (seed 0, the full recipe): scratch lr in {3e-3, 1e-2, 3e-2},
   ImageNet lr in {3e-4, 1e-3, 3e-3}. The best epoch's ``val/select`` (validation AUROC, from epoch 3 on, never an
   epoch calling every validation image one class) wins, a tie to the first listed. A choice at a grid edge widens
   the grid by a factor 3 that way (at most twice), so the chosen value lies inside its grid.
2. **Recipe levers per arm on validation only** (seed 0, the chosen lr): the full recipe, without the weight
   average (``callbacks.ema=null``), without label smoothing (``model.label_smoothing=0``); the best
   ``val/select`` wins, a tie to the full recipe. No test number is read in 1-2 (<out>/selection.json).
3. **Seeds 1-4** of each arm at its choice into <out>/final, beside a copy of its seed-0 run; the chosen keys are
   left out of job names there, so the report pairs the arms by seed.
4. **Reports** (``python -m covidnet.report``, margin +-0.03 AUROC and accuracy, stated before the runs): per model
   and as each arm's 5-seed ensemble, in-split and on COVID-CT-MD and COVID-SemiSeg.
5. **CAMs at output stride 16** (14 x 14 at 224 px): GradCAM and EigenCAM on the 50 SemiSeg slices for every final
   run (lesion mass, pointing game, empty maps), computed as soon as the run is trained (<out>/cams/<job>) and
   gathered into <out>/cams/results.json; and the 10 + 10 test-image figure of both arms' seed-0 models.

    python scripts/studies/field_study.py --out runs/field --data-root <covid-ct> --eval-data <folder of the eval sets> \
        --restore docs/results/field
    python scripts/studies/field_study.py --out runs/field --publish docs/results/field   # the reports so far, committed

A study outlives the machine it started on: ``--publish`` also copies every finished job (without its checkpoints)
to ``docs/results/field/<sweep>/runs``, and ``--restore`` brings those back into ``--out`` on another machine, so the
choices already made and the seeds already trained count there. Checkpoints are not kept (tens of MB each; a run
retrains bit for bit): that is why each final run's CAM numbers are computed right after it trains (step 5), and why
a seed-0 selection run whose checkpoint is gone is trained again for the final set rather than copied.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from covidnet.rundirs.runs import RunDir, SweepDir, not_job_keys

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "lite224"
LR_GRID = {"scratch": ["3e-3", "1e-2", "3e-2"], "imagenet": ["3e-4", "1e-3", "3e-3"]}
MAX_WIDENINGS = 2
# the levers tried at the chosen lr: name -> overrides (the full recipe is experiment=lite224 itself)
LEVERS = {"full": {}, "no_ema": {"callbacks.ema": "null"}, "no_label_smoothing": {"model.label_smoothing": "0"}}
SEEDS = (0, 1, 2, 3, 4)
MARGINS = {"auroc": 0.03, "acc": 0.03}  # equivalence margins, stated in docs/field.md before any run


RECIPE_KEYS = ("model.optimizer.lr", "callbacks.ema", "model.label_smoothing")


def job(sweep: Path, init: str, setting: dict, seed: int) -> Path | None:
    """The finished job of ``sweep`` for ``init``, ``seed`` and exactly ``setting`` among the recipe keys (a job
    with a lever switched off is not the full recipe's), found by its Hydra record."""
    def same(a: str | None, b: str | None) -> bool:  # Hydra records 3e-4 as 0.0003
        try:
            return a == b or (a is not None and b is not None and float(a) == float(b))
        except ValueError:
            return False

    for run in (SweepDir(sweep).job_dirs() if sweep.is_dir() else []):
        have = run.override_values()
        if have.get("init") != init or have.get("seed") != str(seed):
            continue
        if all(same(have.get(k), setting.get(k)) for k in RECIPE_KEYS) and run.read_metrics():
            return run.path
    return None


def train(args, sweep: Path, overrides: list[str]) -> None:
    """One training job; ``ckpt_path=last`` resumes a job a stop interrupted (from the start when it saved nothing)."""
    cmd = [sys.executable, "train.py", "-m", f"experiment={EXPERIMENT}", f"data.root={args.data_root}", f"eval_data={args.eval_data}",
           f"hydra.sweep.dir={sweep}", "ckpt_path=last", *args.override, *overrides]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def val_score(sweep: Path, init: str, setting: dict) -> float:
    """The finished seed-0 job's best ``val/select``; a job that never validated stops the study (nothing to choose by)."""
    path = job(sweep, init, setting, 0)
    score = RunDir(path).read_metrics().get("best_val_score") if path else None
    if score is None:
        raise SystemExit(f"{path or sweep}: no validation score for init={init} {setting}; the choice on validation cannot be made. "
                         "Look at its train.log, remove the job directory and run the study again.")
    return score


def run_setting(args, sweep: Path, init: str, setting: dict) -> float:
    """The seed-0 job of ``setting`` (trained unless it finished), and its best ``val/select``."""
    if job(sweep, init, setting, 0) is None:
        train(args, sweep, [f"init={init}", "seed=0", *(f"{k}={v}" for k, v in setting.items())])
    return val_score(sweep, init, setting)


def widened(grid: list[str], best: int) -> list[str] | None:
    """The grid with one more value (x3 or /3, rounded to one significant figure: 3e-2 -> 9e-2 -> 3e-1) beyond the
    edge the choice sits on; None: the choice is inside."""
    values = [float(v) for v in grid]
    if 0 < best < len(grid) - 1:
        return None
    return [f"{values[0] / 3:.0e}", *grid] if best == 0 else [*grid, f"{values[-1] * 3:.0e}"]


def choose_lr(args, out: Path, init: str) -> dict:
    sweep = out / f"grid_{init}"
    grid = list(LR_GRID[init])
    for widening in range(MAX_WIDENINGS + 1):
        scores = [run_setting(args, sweep, init, {"model.optimizer.lr": lr}) for lr in grid]
        best = max(range(len(grid)), key=lambda i: (scores[i], -i))
        wider = widened(grid, best)
        if wider is None or widening == MAX_WIDENINGS:
            return {"grid": [{"lr": lr, "best_val_select": s} for lr, s in zip(grid, scores)], "lr": grid[best],
                    "inside_grid": wider is None}
        grid = wider


def choose_levers(args, out: Path, init: str, lr: str) -> dict:
    sweep = out / f"grid_{init}"
    scores = {name: run_setting(args, sweep, init, {"model.optimizer.lr": lr, **o}) for name, o in LEVERS.items()}
    best = max(LEVERS, key=lambda n: (scores[n], -list(LEVERS).index(n)))
    return {"levers": scores, "recipe": best}


def select(args, out: Path) -> dict:
    selection_file = out / "selection.json"
    selection = json.loads(selection_file.read_text()) if selection_file.is_file() else {}
    for init in LR_GRID:
        if "chosen" in selection.get(init, {}):
            continue
        lr = choose_lr(args, out, init)
        levers = choose_levers(args, out, init, lr["lr"])
        selection[init] = {**lr, **levers, "chosen": {"model.optimizer.lr": lr["lr"], **LEVERS[levers["recipe"]]}}
        selection_file.write_text(json.dumps(selection, indent=2) + "\n")
    print(f"selection: {json.dumps(selection)}", flush=True)
    return selection


def train_seeds(args, out: Path, selection: dict) -> Path:
    final = out / "final"
    # job names: init and seed only (the project's list of keys that name no job, the recipe keys, the experiment)
    exclude = "hydra.job.config.override_dirname.exclude_keys=[" + ",".join([*not_job_keys(), *RECIPE_KEYS, "experiment"]) + "]"
    for seed in SEEDS:  # one job per call, seeds interleaved: a stopped study has both arms equally far
        for init in LR_GRID:
            chosen = selection[init]["chosen"]
            if job(final, init, chosen, seed) is None:
                selected = job(out / f"grid_{init}", init, chosen, 0) if seed == 0 else None
                if selected is not None and RunDir(selected).best_checkpoint() is not None:
                    final.mkdir(exist_ok=True)
                    shutil.copytree(selected, final / f"init={init},seed=0")
                else:  # a later seed, or a seed-0 run restored without its checkpoint: trained (again, with its seed)
                    train(args, final, [f"init={init}", f"seed={seed}", *(f"{k}={v}" for k, v in chosen.items()), exclude])
                    if selected is not None:
                        record_reproduction(out, selected, job(final, init, chosen, seed))
            job_cams(args, out, job(final, init, chosen, seed))
    return final


def report(final: Path) -> None:
    margins = [f"--margin={m}={v}" for m, v in MARGINS.items()]
    subprocess.run([sys.executable, "-m", "covidnet.report", str(final), *margins], cwd=ROOT, check=True)


def record_reproduction(out: Path, first: Path, again: Path) -> None:
    """<out>/reproduction.json: does a run trained again with the same seed and settings (on this machine) give the
    same test predictions as the selection run (trained on the machine that published it)? The largest |dP(COVID)|."""
    a, b = RunDir(first).read_predictions(), RunDir(again).read_predictions()
    record = json.loads((out / "reproduction.json").read_text()) if (out / "reproduction.json").is_file() else {}
    record[again.name] = {"first": str(first), "again": str(again), "same_images": sorted(a) == sorted(b),
                          "max_abs_difference": max((abs(a[k] - b[k]) for k in a.keys() & b.keys()), default=None)}
    (out / "reproduction.json").write_text(json.dumps(record, indent=1) + "\n")


CAM_LAYER = "layer3"  # output stride 16: 14 x 14 cells at 224 px


def visualize(args, ckpts: list[Path], out_dir: Path, *extra: str) -> None:
    listed = "[" + ",".join(f"'{p}'" for p in ckpts) + "]"
    subprocess.run([sys.executable, "visualize.py", f"ckpt={listed}", f"data.root={args.data_root}", f"layer={CAM_LAYER}",
                    f"out_dir='{out_dir}'", *extra], cwd=ROOT, check=True)


def job_cams(args, out: Path, run: Path) -> None:
    """One final run's CAM numbers (GradCAM and EigenCAM: lesion mass and pointing game on the 50 SemiSeg slices,
    faithfulness and lung share on the 10 + 10 drawn test images), while its checkpoint is at hand."""
    target = out / "cams" / run.name
    if (target / "results.json").is_file():
        return
    if RunDir(run).best_checkpoint() is None:
        raise SystemExit(f"{run}: no checkpoint for its CAM numbers (a restored run). Remove the job directory from "
                         f"{run.parent} and run the study again: it retrains the run bit for bit, then draws its CAMs.")
    visualize(args, [run], target, f"localize={args.eval_data}/covid-semiseg", f"n_per_class={args.n_per_class}")


def gather_cams(out: Path, final: Path) -> Path:
    """<out>/cams/results.json: the per-run CAM results in one file (scripts/studies/cam_summary.py reads it)."""
    runs = sorted(p.name for p in final.iterdir() if (p / "metrics.json").is_file())
    parts = [json.loads((out / "cams" / name / "results.json").read_text()) for name in runs]
    merged = {k: v for k, v in parts[0].items() if not isinstance(v, dict)}
    for key in ("models", "cam_grid", "not_computed", "faithfulness", "shortcut", "localisation"):
        merged[key] = {name: value for part in parts for name, value in (part.get(key) or {}).items()}
    merged["seconds"] = round(sum(part["seconds"] for part in parts), 1)
    target = out / "cams" / "results.json"
    target.write_text(json.dumps(merged, indent=1) + "\n")
    return target


def cams(args, out: Path, final: Path) -> None:
    """The gathered CAM numbers of every final run, and the 10 + 10 figure of both arms' seed-0 models (stride 16)."""
    gather_cams(out, final)
    figure = out / "cam_figure"
    seed0 = [final / f"init={i},seed=0" for i in LR_GRID]
    if (figure / "results.json").is_file():
        return
    if any(RunDir(p).best_checkpoint() is None for p in seed0):
        print(f"cam figure: not drawn, a seed-0 checkpoint is not on this machine (restored runs keep none); retrain it with "
              f"its command in {final}/report.md, then: python visualize.py ckpt=[...] layer={CAM_LAYER}", flush=True)
        return
    visualize(args, seed0, figure, f"n_per_class={args.n_per_class}")


BUNDLE = ("report.md", "report.json", "jobs.json", "predictions.csv", "summary.csv", "runs.csv", "roc.png", "learning_curves.png")


def checkout_of(path: Path) -> Path:
    """The git checkout the study ran in (the one holding ``path``): its paths are written relative to it."""
    done = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, text=True)
    return Path(done.stdout.strip()) if done.returncode == 0 else ROOT


def portable(text: str, checkout: Path) -> str:
    """Paths of this machine as the study's checkout sees them: inside it -> relative, its ``../shared`` -> ``../shared``."""
    return text.replace(f"{checkout.parent}/shared/", "../shared/").replace(f"{checkout}/", "")


def publish(out: Path, dest: Path) -> list[Path]:
    """Write the report of every sweep of the study that has a finished job (the grids, the final seeds) and copy it,
    with the per-image predictions behind it, to ``dest/<sweep>`` with portable paths; ``selection.json`` too. Each
    copy must rebuild byte for byte from its own predictions (``covidnet.report --from-predictions``), checked here."""
    written, checkout = [], checkout_of(out)
    for sweep in sorted(p for p in out.iterdir() if p.is_dir() and any((j / "metrics.json").is_file() for j in p.iterdir() if j.is_dir())):
        subprocess.run([sys.executable, "-m", "covidnet.report", str(sweep), *(f"--margin={m}={v}" for m, v in MARGINS.items())],
                       cwd=ROOT, check=True)
        target = dest / sweep.name
        target.mkdir(parents=True, exist_ok=True)
        for name in BUNDLE:
            if (sweep / name).is_file():
                data = (sweep / name).read_bytes()
                (target / name).write_bytes(data if name.endswith(".png") else portable(data.decode(), checkout).encode())
        # the committed form is the one rebuilt from its own predictions (the copy's text was rendered with this machine's
        # longer paths, which a message's length limit may cut elsewhere); a second rebuild must change nothing
        rebuild = [sys.executable, "-m", "covidnet.report", "--from-predictions", str(target)]
        subprocess.run(rebuild, cwd=ROOT, check=True)
        before = {n: (target / n).read_bytes() for n in BUNDLE if n.endswith((".md", ".json", ".csv")) and (target / n).is_file()}
        subprocess.run(rebuild, cwd=ROOT, check=True)
        changed = [n for n, b in before.items() if (target / n).read_bytes() != b]
        if changed:
            raise SystemExit(f"{target}: {', '.join(changed)} did not rebuild from its predictions as written")
        written.append(target)
    for sweep in finished_sweeps(out):
        archive(sweep, dest / sweep.name / RUNS, checkout)
    if (out / "cams").is_dir():
        for done in sorted((out / "cams").glob("*/results.json")):
            copy_portable(done, dest / "cams" / done.parent.name / "results.json", checkout)
        if (out / "cams" / "results.json").is_file():
            copy_portable(out / "cams" / "results.json", dest / "cams" / "results.json", checkout)
    if (out / "selection.json").is_file():
        copy_portable(out / "selection.json", dest / "selection.json", checkout)
    return written


# --- a study that outlives its machine --------------------------------------------------------------------------
RUNS = "runs"  # docs/results/field/<sweep>/runs: the sweep's finished jobs without checkpoints
TEXT = (".json", ".yaml", ".csv", ".log", ".md", ".jsonl", ".txt")


def finished_sweeps(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and any((j / "metrics.json").is_file() for j in p.iterdir() if j.is_dir()))


def copy_portable(src: Path, dst: Path, checkout: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    dst.write_bytes(portable(data.decode(), checkout).encode() if src.suffix in TEXT else data)


def archive(sweep: Path, target: Path, checkout: Path) -> None:
    """The sweep's launch records and every finished job (metrics.json written), without ``checkpoints/``, copied
    to ``target`` with portable paths. An unfinished job is left out: it could only resume from its checkpoint."""
    if target.exists():
        shutil.rmtree(target)
    for record in [sweep / "multirun.yaml", *sorted((sweep / "launches").glob("*.yaml")), sweep / "failed_jobs.jsonl"]:
        if record.is_file():
            copy_portable(record, target / record.relative_to(sweep), checkout)
    for run in SweepDir(sweep).job_dirs():
        if not run.read_metrics():
            continue
        for f in sorted(run.path.rglob("*")):
            rel = f.relative_to(run.path)
            if f.is_file() and rel.parts[0] != "checkpoints" and not f.name.endswith(".lock"):
                copy_portable(f, target / run.path.name / rel, checkout)


def restore(source: Path, out: Path) -> list[Path]:
    """Bring back the jobs an earlier machine finished (``source/<sweep>/runs``, written by ``--publish``) and their
    CAM results: whatever ``out`` lacks is copied; nothing there is overwritten. The earlier launch records go to the
    sweep's ``launches/``, dated before this machine's own launches, so the report expects their jobs too; a record
    ``out`` already holds (the machine that published is the one resuming) is not added twice."""
    restored, checkout = [], checkout_of(out) if out.is_dir() else ROOT
    for archived in sorted(source.glob(f"*/{RUNS}")):
        sweep = out / archived.parent.name
        records = [*sorted((archived / "launches").glob("*.yaml")), archived / "multirun.yaml"]
        # a launch this machine made and published is here already (as multirun.yaml or under launches/): not twice
        here = {portable(r.read_text(), checkout) for r in [sweep / "multirun.yaml", *(sweep / "launches").glob("*.yaml")] if r.is_file()}
        for order, record in enumerate(r for r in records if r.is_file()):
            name = record.name if record.parent.name == "launches" else f"multirun-restored-{hashlib.sha1(record.read_bytes()).hexdigest()[:10]}.yaml"
            kept = sweep / "launches" / name
            if not kept.exists() and record.read_text() not in here:
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(record, kept)
                os.utime(kept, (order + 1, order + 1))  # the oldest launches: before anything this machine starts
        if (archived / "failed_jobs.jsonl").is_file() and not (sweep / "failed_jobs.jsonl").exists():
            shutil.copy2(archived / "failed_jobs.jsonl", sweep / "failed_jobs.jsonl")
        for run in sorted(p for p in archived.iterdir() if (p / "metrics.json").is_file()):
            if not (sweep / run.name).exists():
                shutil.copytree(run, sweep / run.name)
                restored.append(sweep / run.name)
    for done in sorted(source.glob("cams/*/results.json")):
        if not (out / "cams" / done.parent.name / "results.json").exists():
            (out / "cams" / done.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(done, out / "cams" / done.parent.name / "results.json")
    return restored




def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data-root", default="data/covid-ct")
    p.add_argument("--eval-data", default="data")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="added to every training job (a smoke test of the study: data.image_size=32 trainer.max_epochs=2)")
    p.add_argument("--n-per-class", type=int, default=10, help="test images of each class in the CAM figures and their numbers")
    p.add_argument("--until", choices=["select", "train", "report", "cams"], default="cams",
                   help="stop after this step (the later ones resume from the files the earlier ones left)")
    p.add_argument("--restore", type=Path, metavar="DIR",
                   help="first bring back the finished jobs published to DIR (docs/results/field) that --out lacks")
    p.add_argument("--publish", type=Path, metavar="DIR",
                   help="train nothing: write the reports of the sweeps done so far and copy them to DIR (docs/results/field)")
    args = p.parse_args(argv)
    out = args.out.expanduser().absolute()
    if args.publish:
        for target in publish(out, args.publish.expanduser().absolute()):
            print(f"published: {target}")
        return
    args.data_root = str(Path(args.data_root).expanduser().absolute())
    args.eval_data = str(Path(args.eval_data).expanduser().absolute())
    out.mkdir(parents=True, exist_ok=True)
    if args.restore:
        for run in restore(args.restore.expanduser().absolute(), out):
            print(f"restored: {run}", flush=True)
    selection = select(args, out)
    if args.until == "select":
        return
    final = train_seeds(args, out, selection)
    if args.until == "train":
        return
    report(final)
    if args.until == "report":
        return
    cams(args, out, final)


if __name__ == "__main__":
    main()
