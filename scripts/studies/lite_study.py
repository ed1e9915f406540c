"""ImageNet vs scratch on EfficientNet-Lite0, run as planned in docs/transfer.md, one job at a time.

1. **Learning rate per init on validation AUROC only**, seed 0: init=scratch lr in {3e-4, 1e-3, 3e-3}; init=imagenet
   lr in {3e-4, 1e-3} x model.backbone_lr_scale in {0.1, 1.0}. The higher best-epoch ``best_val_score``
   (val/auroc) wins, a tie goes to the first listed; no test number is read (<out>/selection.json).
2. **Seeds 1-4** at each init's chosen setting into <out>/final, beside a copy of the seed-0 grid run; lr and
   backbone_lr_scale are left out of job names there, so the report pairs the two inits by seed.
3. **Reference row**: ResNet-18 from scratch at its default lr (3e-4), same budget, seeds 0-4, into <out>/reference.
4. ``python -m covidnet.report`` on <out>/final (equivalence margins ±0.05 AUROC and accuracy, as planned) and
   <out>/reference.

Every job runs ``experiment=lite`` (128 px, 20 epochs, eval_sets covid_ct_md and semiseg). A step already done
(its files present) is not run again, so an interrupted study resumes where it stopped.

    python scripts/studies/lite_study.py --out runs/lite --data-root ../shared/data/covid-ct --eval-data ../shared/data
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from transfer_ft_study import job, select_on_validation

ROOT = Path(__file__).resolve().parents[2]
GRID = {
    "scratch": [{"model.optimizer.lr": lr} for lr in ("3e-4", "1e-3", "3e-3")],
    "imagenet": [{"model.optimizer.lr": lr, "model.backbone_lr_scale": s} for lr in ("3e-4", "1e-3") for s in ("0.1", "1.0")],
}
CHOSEN_KEYS = ["model.optimizer.lr", "model.backbone_lr_scale"]
SEEDS = (0, 1, 2, 3, 4)


def train(args, sweep: Path, overrides: list[str]) -> None:
    cmd = [sys.executable, "train.py", "-m", "experiment=lite", f"data.root={args.data_root}", f"eval_data={args.eval_data}",
           f"hydra.sweep.dir={sweep}", *overrides]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "covid-ct"))
    p.add_argument("--eval-data", default=str(ROOT.parent / "shared" / "data"))
    args = p.parse_args(argv)
    out = args.out.expanduser().absolute()
    args.data_root = str(Path(args.data_root).expanduser().absolute())
    args.eval_data = str(Path(args.eval_data).expanduser().absolute())
    out.mkdir(parents=True, exist_ok=True)

    selection = select_on_validation(out, GRID, lambda grid, overrides: train(args, grid, overrides))

    final = out / "final"
    exclude = "hydra.job.config.override_dirname.exclude_keys=[data.root,eval_data,callbacks.cam,ckpt_path,paths.log_dir,hydra.sweep.dir," + ",".join(CHOSEN_KEYS) + "]"
    for seed in SEEDS:  # one job per call: a study stopped midway resumes with the missing jobs only
        for init, sel in selection.items():
            chosen = sel["chosen"]
            if job(final, init, chosen, seed) is not None:
                continue
            if seed == 0:
                final.mkdir(exist_ok=True)
                shutil.copytree(job(out / f"grid_{init}", init, chosen, 0), final / f"init={init},seed=0")
            else:
                train(args, final, [f"init={init}", f"seed={seed}", *(f"{k}={v}" for k, v in chosen.items()), exclude])

    reference = out / "reference"
    for seed in SEEDS:
        if job(reference, "scratch", {"model.arch": "resnet18"}, seed) is None:
            train(args, reference, ["init=scratch", "model.arch=resnet18", f"seed={seed}"])
    margins = ["--margin", "auroc=0.05", "--margin", "acc=0.05"]  # stated before the runs (docs/transfer.md)
    subprocess.run([sys.executable, "-m", "covidnet.report", str(final), *margins], cwd=ROOT, check=True)
    subprocess.run([sys.executable, "-m", "covidnet.report", str(reference)], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
