"""benchmarks/throughput.py: runs end to end and stays importable where Hydra and grad-cam are absent (GPU box)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "throughput.py"


def test_benchmark_imports_neither_hydra_nor_grad_cam_and_names_missing_data(tmp_path):
    code = (
        f"import runpy, sys; bench = runpy.run_path({str(SCRIPT)!r}, run_name='not_main')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf', 'pytorch_grad_cam'))\n"
        "assert not bad, f'imported {bad}'\n"
        f"bench['main'](['--data-root', {str(tmp_path / 'nope')!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "imported" not in result.stderr, result.stderr[-2000:]
    assert result.returncode != 0 and "No COVID-CT data" in result.stderr and "--data-root" in result.stderr, result.stderr[-2000:]


def test_benchmark_prints_one_table(synthetic_root):
    cmd = [sys.executable, str(SCRIPT), "--data-root", str(synthetic_root), "--image-size", "32", "--batch-size", "4",
           "--steps", "2", "--warmup", "1", "--repeats", "1", "--data-epochs", "2", "--num-workers", "0"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    for what in ("train: Lightning / bare ratio", "data: train loader later epochs, workers=0", "eval: Lightning validate",
                 "hw: achieved by Lightning training", "memory: peak RSS of this process (MiB)"):
        assert what in rows, f"missing row {what!r} in:\n{result.stdout}"
    ratio = float(rows["train: Lightning / bare ratio"].split("|")[2])
    assert ratio > 0
