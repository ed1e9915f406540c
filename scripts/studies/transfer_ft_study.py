"""The full fine-tuning arms of docs/transfer.md, run as pre-registered there, one job at a time.

1. **Sizing**: one ResNet-152 training step (64 px, batch 32, bf16-mixed autocast, channels-last, AdamW) timed
   3 times after a warm-up; the epoch budget E = clamp(floor(((32 min - 8 x 30 s) / step / 8 - 4.7) / 14.3), 2, 6)
   is the same for every run (<out>/plan.json).
2. **Learning rate per init on validation AUROC only**, seed 0: init=scratch lr in {3e-4, 1e-3}; init=ct lr 3e-4
   with model.backbone_lr_scale in {0.1, 1.0}. The higher best-epoch ``best_val_score`` (val/auroc) wins, a tie goes
   to the first listed; no test number is read (<out>/selection.json).
3. **Seeds 1 and 2** at each init's chosen setting into <out>/final, beside a copy of the seed-0 grid run; lr and
   backbone_lr_scale are left out of job names there, so the report pairs the two inits on the same test images.
4. ``python -m covidnet.report <out>/final --margin auroc=0.05 --margin acc=0.06``: the equivalence margins
   docs/transfer.md states before the runs; the report's verdicts use the interval over seeds and test images.

A step already done (its files present) is not run again, so an interrupted study resumes where it stopped.

    python scripts/studies/transfer_ft_study.py --out runs/transfer_ft --data-root ../shared/data/covid-ct
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from covidnet.rundirs.runs import RunDir, SweepDir

ROOT = Path(__file__).resolve().parents[2]
GRID = {
    "scratch": [{"model.optimizer.lr": "3e-4"}, {"model.optimizer.lr": "1e-3"}],
    "ct": [{"model.optimizer.lr": "3e-4", "model.backbone_lr_scale": "0.1"}, {"model.optimizer.lr": "3e-4", "model.backbone_lr_scale": "1.0"}],
}
CHOSEN_KEYS = ["model.optimizer.lr", "model.backbone_lr_scale"]
MARGINS = {"auroc": 0.05, "acc": 0.06}  # equivalence margins, stated in docs/transfer.md before any run


def step_seconds(repeats: int = 3) -> list[float]:
    """Seconds of one training step of the transfer_ft recipe's network (random weights: the cost, not the result)."""
    import torch
    from torchvision import models

    torch.manual_seed(0)
    net = models.resnet152(num_classes=1).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=1e-4)
    x = torch.rand(32, 3, 64, 64).to(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (32, 1)).float()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return times[1:]


def epochs_for(step: float) -> int:
    return max(2, min(6, math.floor(((32 * 60 - 8 * 30) / step / 8 - 4.7) / 14.3)))


def train(args, sweep: Path, overrides: list[str]) -> None:
    cmd = [sys.executable, "train.py", "-m", "experiment=transfer_ft", f"data.root={args.data_root}", f"hydra.sweep.dir={sweep}", *overrides]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def job(sweep: Path, init: str, setting: dict, seed: int) -> Path | None:
    """The finished job of ``sweep`` with these overrides (found by its Hydra record, not by its folder name)."""
    def same(a: str | None, b: str) -> bool:  # Hydra records 3e-4 as 0.0003
        try:
            return a is not None and float(a) == float(b)
        except ValueError:
            return a == b

    want = {"init": init, "seed": str(seed), **setting}
    for run in (SweepDir(sweep).job_dirs() if sweep.is_dir() else []):
        have = run.override_values()
        if all(same(have.get(k), v) for k, v in want.items()) and run.read_metrics():
            return run.path
    return None


def select_on_validation(out: Path, grid: dict[str, list[dict]], train_job) -> dict:
    """Per init, the grid setting with the best seed-0 ``best_val_score`` (val/auroc; a tie goes to the first
    listed; no test number is read). Missing grid jobs are trained first with ``train_job(sweep dir, overrides)``
    into ``<out>/grid_<init>``; the choice is written to <out>/selection.json."""
    selection = {}
    for init, settings in grid.items():
        sweep = out / f"grid_{init}"
        for setting in settings:
            if job(sweep, init, setting, 0) is None:
                train_job(sweep, [f"init={init}", "seed=0", *(f"{k}={v}" for k, v in setting.items())])
        scores = [RunDir(job(sweep, init, s, 0)).read_metrics()["best_val_score"] for s in settings]
        best = max(range(len(settings)), key=lambda i: (scores[i], -i))
        selection[init] = {"grid": [{**s, "best_val_auroc": v} for s, v in zip(settings, scores)], "chosen": settings[best]}
    (out / "selection.json").write_text(json.dumps(selection, indent=2))
    print(f"selection: {json.dumps(selection)}", flush=True)
    return selection


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "covid-ct"))
    args = p.parse_args(argv)
    out = args.out.expanduser().absolute()
    args.data_root = str(Path(args.data_root).expanduser().absolute())
    out.mkdir(parents=True, exist_ok=True)

    plan_file = out / "plan.json"
    if not plan_file.is_file():
        times = step_seconds()
        plan = {"step_seconds": times, "median_step_s": statistics.median(times), "epochs": epochs_for(statistics.median(times))}
        plan_file.write_text(json.dumps(plan, indent=2))
    plan = json.loads(plan_file.read_text())
    print(f"plan: {plan}", flush=True)
    common = [f"trainer.max_epochs={plan['epochs']}"]

    selection = select_on_validation(out, GRID, lambda grid, overrides: train(args, grid, [*common, *overrides]))

    final = out / "final"
    exclude = "hydra.job.config.override_dirname.exclude_keys=[data.root,callbacks.cam,ckpt_path,paths.log_dir,hydra.sweep.dir," + ",".join(CHOSEN_KEYS) + "]"
    for init, sel in selection.items():
        chosen = sel["chosen"]
        if job(final, init, chosen, 0) is None:
            final.mkdir(exist_ok=True)
            shutil.copytree(job(out / f"grid_{init}", init, chosen, 0), final / f"init={init},seed=0")
        if any(job(final, init, chosen, s) is None for s in (1, 2)):
            train(args, final, [*common, f"init={init}", "seed=1,2", *(f"{k}={v}" for k, v in chosen.items()), exclude])
    margins = [f"--margin={m}={v}" for m, v in MARGINS.items()]
    subprocess.run([sys.executable, "-m", "covidnet.report", str(final), *margins], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
