"""End to end: covidnet's default recipe against the published COVID-CT baseline as a plain PyTorch loop.

Whole processes on the same machine, interleaved in pairs (covidnet, baseline, then baseline, covidnet, ...),
so a load that rises or falls during the benchmark favours neither. Per run: seconds per epoch (median of
the run's epochs, each with its validation; covidnet's from metrics.json ``epoch_seconds``, the baseline's
printed by benchmarks/baseline_covid_ct.py), seconds for the full run (process start to exit: imports,
decoding, fit, test, CAMs), peak RSS, test AUROC. Prints one table of the medians over the pairs and the
ratios baseline / covidnet (> 1: covidnet is faster).

    python benchmarks/end_to_end.py --data-root ../shared/data/covid-ct --epochs 2 --pairs 2
    python benchmarks/end_to_end.py --covidnet-args trainer.precision=32-true channels_last=false  # the fp32 default
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from covidnet.rundirs.runs import RunDir

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out[-4000:]}")
    return wall, usage.ru_maxrss / 1024, out


def covidnet(args, work: Path, i: int) -> dict:
    out = work / f"covidnet-{i}"
    cmd = [sys.executable, "train.py", "init=scratch", f"trainer.max_epochs={args.epochs}", f"data.root={args.data_root}",
           f"hydra.run.dir={out}", *args.covidnet_args]
    wall, rss, _ = run(cmd, ROOT)
    m = RunDir(out).read_metrics()
    return {"epoch_s": statistics.median(m["epoch_seconds"]), "epochs": m["epoch_seconds"], "wall_s": wall, "rss_mib": rss,
            "test_auroc": m["test"]["test/auroc"], "hardware": m["hardware"]}


def baseline(args, work: Path, i: int) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "baseline_covid_ct.py"), f"--data-root={args.data_root}", f"--epochs={args.epochs}", f"--seed={i}"]
    wall, rss, out = run(cmd, ROOT)
    m = json.loads(out.strip().splitlines()[-1])
    return {"epoch_s": statistics.median(m["epoch_seconds"]), "epochs": m["epoch_seconds"], "wall_s": wall, "rss_mib": rss, "test_auroc": m["test"]["auroc"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=os.environ.get("COVIDNET_DATA", str(ROOT.parent / "shared" / "data" / "covid-ct")))
    p.add_argument("--epochs", type=int, default=2, help="epochs of each run (both recipes)")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--covidnet-args", nargs="*", default=[], help="extra train.py overrides for covidnet's runs")
    args = p.parse_args(argv)
    runs: dict[str, list[dict]] = {"covidnet": [], "baseline": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            order = ("covidnet", "baseline") if i % 2 == 0 else ("baseline", "covidnet")
            for name in order:
                t = time.strftime("%H:%M:%S", time.gmtime())
                result = (covidnet if name == "covidnet" else baseline)(args, Path(tmp), i)
                runs[name].append(result)
                print(f"# pair {i} {name} started {t} UTC: {json.dumps(result)}", flush=True)
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("epoch_s", "wall_s", "rss_mib", "test_auroc")} for name, rs in runs.items()}
    c, b = med["covidnet"], med["baseline"]
    hw = runs["covidnet"][0]["hardware"]
    print(f"# end to end | {hw['device_name']} | {args.pairs} interleaved pairs, {args.epochs} epochs each | covidnet: "
          f"precision={hw['precision']} channels_last={hw['channels_last']} threads={hw['threads']} {' '.join(args.covidnet_args)}")
    print("| recipe | s / epoch (median) | s / full run (median) | peak RSS MiB | test AUROC (median) |")
    print("|---|---:|---:|---:|---:|")
    extra = f" {' '.join(args.covidnet_args)}" if args.covidnet_args else ""
    print(f"| covidnet default (`train.py init=scratch{extra}`: ResNet-18, 224 px, batch 32, CAM callback) | {c['epoch_s']:.1f} | {c['wall_s']:.1f} | {c['rss_mib']:.0f} | {c['test_auroc']:.3f} |")
    print(f"| published baseline, plain loop (PIL decode every epoch, batch 10, fp32) | {b['epoch_s']:.1f} | {b['wall_s']:.1f} | {b['rss_mib']:.0f} | {b['test_auroc']:.3f} |")
    print(f"| **baseline / covidnet** | **x{b['epoch_s'] / c['epoch_s']:.2f}** | **x{b['wall_s'] / c['wall_s']:.2f}** | | |")
    pair_ratios = [br["epoch_s"] / cr["epoch_s"] for br, cr in zip(runs["baseline"], runs["covidnet"])]
    print(f"# per-pair epoch ratios: {', '.join(f'{r:.2f}' for r in pair_ratios)}")


if __name__ == "__main__":
    main()
