"""The files of a run directory: their names, and the one writer and one reader of each format.

A run directory (covidnet.runs.RunDir finds its way around it)::

    metrics.json                  test metrics of the best checkpoint, epochs, times      (read_metrics)
    predictions_test.csv          file,label,prob_covid[,extra...] per test image          (write_predictions_csv, read_prediction_rows)
    checkpoints/<best>.ckpt       the best-on-validation checkpoint; its name is recorded in metrics.json
    checkpoints/last.ckpt         the latest state, for resuming
    .hydra/                       the job's config, overrides and Hydra settings
    eval/<set>/predictions.csv    path,patient,label,diagnosis,position,slice_label,prob_covid (write_eval, read_eval[_rows])
    eval/<set>/metrics.json       external evaluations of the best checkpoint, written last: it marks the result complete

``evaluate.py`` writes its ``<out_dir>/<model>/<set>/`` with the same :func:`write_eval`, so an evaluation result
has one format wherever it lies. Every reader here refuses a file cut short (a copy or a write that did not finish)
rather than reading it as a smaller result. Nothing here imports torch: the sweep report reads runs without it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

from covidnet.atomic import atomic_path, write_json
from covidnet.sources.base import Record

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions_test.csv"
PREDICTION_COLUMNS = ("file", "label", "prob_covid")
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
HYDRA_DIR = ".hydra"
EVAL_DIR = "eval"
EVAL_PREDICTIONS_FILE = "predictions.csv"
EVAL_FILES = (METRICS_FILE, EVAL_PREDICTIONS_FILE)  # what one evaluation result directory holds
EVAL_COLUMNS = ("path", "patient", "label", "diagnosis", "position", "slice_label", "prob_covid")
FAILED_JOBS_FILE = "failed_jobs.jsonl"
MULTIRUN_FILE = "multirun.yaml"


# --- metrics.json ---------------------------------------------------------------------------------------------
def read_metrics(path: str | Path) -> dict | None:
    """A metrics.json as a dict; None when it does not exist (a damaged file raises ValueError)."""
    path = Path(path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object.")
    return data


# --- CSV tables -----------------------------------------------------------------------------------------------
def _read_rows(path: Path, required: tuple[str, ...], expected: int | None = None) -> list[dict[str, str]]:
    """Rows of a covidnet CSV, refused when cut short: it must end with a complete line, every row must have every
    ``required`` column, and where the writer recorded how many rows it wrote (``expected``) the count must match."""
    truncated = (f"{path} is truncated (a copy or a write that did not finish); its rows cannot be trusted. "
                 "Copy the file again from the run, or retrain the run.")
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raise ValueError(f"{truncated[:-1]} It ends in the middle of a line.")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(required) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path} lacks the column(s) {sorted(missing)}; expected {','.join(required)} as covidnet writes.")
        rows = []
        for row in reader:
            if None in row or any(row.get(c) in (None, "") for c in required):
                raise ValueError(f"{truncated} Line {reader.line_num} is incomplete: {row}.")
            rows.append(row)
    if expected is not None and len(rows) != expected:
        raise ValueError(f"{truncated[:-1]} It holds {len(rows)} predictions; the run's metrics.json says it predicted {expected}.")
    return rows


def read_prediction_rows(path: str | Path, expected: int | None = None) -> list[dict]:
    """A predictions_test.csv -> its rows, ``label`` an int and ``prob_covid`` a float, extra columns (``source``,
    ``patient``) as written; a repeated image is an error. ``expected``: the count metrics.json records
    (``n_test_predictions``), checked."""
    path = Path(path)
    rows, seen = [], set()
    for line, row in enumerate(_read_rows(path, PREDICTION_COLUMNS, expected), start=2):
        try:
            row = {**row, "label": int(float(row["label"])), "prob_covid": float(row["prob_covid"])}
        except ValueError as err:
            raise ValueError(f"{path}: line {line} does not hold a label and a probability ({err}).") from err
        key = (row["file"], row["label"])
        if key in seen:
            raise ValueError(f"{path}: {key[0]} (label {key[1]}) appears twice; predictions must name each image once.")
        seen.add(key)
        rows.append(row)
    return rows


def read_predictions_csv(path: str | Path, expected: int | None = None) -> dict[tuple[str, int], float]:
    """A predictions_test.csv -> ``{(file, label): P(COVID)}`` (:func:`read_prediction_rows`, checked the same way)."""
    return {(r["file"], r["label"]): r["prob_covid"] for r in read_prediction_rows(path, expected)}


def write_predictions_csv(path: str | Path, files: Iterable[str], labels: Iterable[int], probs: Iterable[float],
                          extra: dict[str, Iterable] | None = None) -> None:
    """Write file,label,prob_covid (plus ``extra`` columns, e.g. patient) atomically."""
    extra = extra or {}
    columns = [list(files), list(labels), [f"{float(p):.6f}" for p in probs], *(list(v) for v in extra.values())]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*PREDICTION_COLUMNS, *extra])
        writer.writerows(zip(*columns))


# --- evaluation results: <run>/eval/<set>/ and evaluate.py's <out_dir>/<model>/<set>/ --------------------------
def write_eval(out: str | Path, records: list[Record], probs: Iterable[float], metrics: dict) -> Path:
    """One evaluation result into ``out``: predictions.csv (one row per scored record) first, metrics.json last,
    so a directory with metrics.json is complete. Returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / EVAL_PREDICTIONS_FILE) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(EVAL_COLUMNS)
        for r, p in zip(records, probs):
            w.writerow([r.key, r.patient or "", r.label, r.diagnosis, "" if r.position is None else r.position,
                        "" if r.slice_label is None else r.slice_label, f"{float(p):.6f}"])
    write_json(out / METRICS_FILE, metrics)
    return out


def read_eval_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of one evaluation's predictions.csv as written (strings): ``path``, ``patient``, ``label``, ...
    ``prob_covid``; refused when cut short."""
    return _read_rows(Path(path), ("path", "prob_covid"))


def read_eval(out: str | Path) -> tuple[dict, list[dict[str, str]]]:
    """(metrics.json, prediction rows as written: ``path``, ``patient``, ``label``, ... ``prob_covid``) of one
    evaluation result written by :func:`write_eval`; rows as strings, as a rebuilt report's are
    (covidnet.report.bundle). A predictions file cut short raises ValueError."""
    out = Path(out)
    metrics = read_metrics(out / METRICS_FILE)
    if metrics is None:
        raise ValueError(f"{out} holds no {METRICS_FILE}: not a complete evaluation result.")
    return metrics, read_eval_rows(out / EVAL_PREDICTIONS_FILE)


def eval_results(root: str | Path) -> list[str]:
    """Names of the complete evaluation results (folders with a metrics.json) directly below ``root``, sorted."""
    root = Path(root)
    return sorted(d.name for d in root.iterdir() if (d / METRICS_FILE).is_file()) if root.is_dir() else []
