"""The files of a run directory: their names, and the one writer and one reader of each format.

A run directory (covidnet.rundirs.runs.RunDir finds its way around it)::

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
import math
from collections.abc import Iterable
from pathlib import Path

from covidnet.core.atomic import atomic_path, write_json
from covidnet.core.errors import ResultFileError
from covidnet.images.sources.base import Record

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
LAUNCHES_DIR = "launches"  # <sweep>/launches/multirun-<time>.yaml: the records of earlier launches into one sweep directory


# --- metrics.json ---------------------------------------------------------------------------------------------
def read_metrics(path: str | Path) -> dict | None:
    """A metrics.json as a dict; None when it does not exist (a damaged file raises ValueError)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ResultFileError(f"{path} is not valid JSON ({err.msg}, line {err.lineno}): truncated or damaged. "
                              "Copy it again from the run.") from err
    if not isinstance(data, dict):
        raise ResultFileError(f"{path} does not hold a JSON object.")
    return data


# --- CSV tables -----------------------------------------------------------------------------------------------
# Every reader refuses, naming the file and the line: a file cut short (not ending in a newline, a short row, fewer
# rows than its writer recorded), a value that cannot be what the writer wrote (a probability outside [0, 1], NaN or
# inf, a label other than 0 or 1), a row named twice, and more rows than recorded.
def _damaged(path: Path, fix: str) -> str:
    return f"{path} is damaged or edited; its rows cannot be trusted. {fix}"


def check_probability(path: Path, line: int, value: str, column: str = "prob_covid") -> float:
    """``value`` as a P(COVID): a finite number in [0, 1] (the writers write nothing else), else refused."""
    try:
        p = float(value)
    except ValueError:
        p = float("nan")
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise ResultFileError(f"{path}, line {line}: {column}={value!r} is not a probability (a finite number in [0, 1]); "
                              "the file was edited or damaged. Copy it again from the run, or rerun what wrote it.")
    return p


def check_label(path: Path, line: int, value: str) -> int:
    """``value`` as a label: 0 (non-COVID) or 1 (COVID), else refused."""
    if value.strip() not in ("0", "1", "0.0", "1.0"):
        raise ResultFileError(f"{path}, line {line}: label={value!r} is not 0 or 1; the file was edited or damaged. "
                              "Copy it again from the run, or rerun what wrote it.")
    return int(float(value))


def read_table(path: str | Path, required: tuple[str, ...], check=None, key=None, expected: int | None = None,
               recorded: str = "its writer", fix: str = "Copy the file again from the run, or rerun what wrote it.") -> list[dict]:
    """The one reader of covidnet's CSV tables: rows as dicts after ``check(row, line)`` (which converts and may
    refuse a value), each ``key(row)`` once, ``expected`` rows (the count ``recorded`` in another file)."""
    path = Path(path)
    truncated = f"{path} is truncated (a copy or a write that did not finish); its rows cannot be trusted. {fix}"
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        last = raw.count(b"\n") + 1
        raise ResultFileError(f"{truncated} It ends in the middle of a line (line {last}).")
    rows, seen = [], {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(required) - set(reader.fieldnames or [])
        if missing:
            raise ResultFileError(f"{path} lacks the column(s) {sorted(missing)}; expected {','.join(required)} as covidnet writes.")
        for row in reader:
            line = reader.line_num
            if None in row:
                raise ResultFileError(f"{_damaged(path, fix)} Line {line} has more fields than the header.")
            if any(v is None for v in row.values()) or any(row.get(c) in (None, "") for c in required):
                raise ResultFileError(f"{truncated} Line {line} is incomplete: {row}.")
            row = check(row, line) if check else row
            name = key(row) if key else None
            if name is not None and name in seen:
                raise ResultFileError(f"{_damaged(path, fix)} Line {line} is duplicated: {name} already on line {seen[name]}.")
            seen[name] = line
            rows.append(row)
    if expected is not None and len(rows) < expected:
        raise ResultFileError(f"{truncated} It holds {len(rows)} rows; {recorded} says it wrote {expected}.")
    if expected is not None and len(rows) > expected:
        raise ResultFileError(f"{_damaged(path, fix)} It holds {len(rows)} rows; {recorded} says it wrote {expected}: rows were added.")
    return rows


def _prediction_row(path: Path):
    def check(row: dict, line: int) -> dict:
        return {**row, "label": check_label(path, line, row["label"]), "prob_covid": check_probability(path, line, row["prob_covid"])}
    return check


def read_prediction_rows(path: str | Path, expected: int | None = None) -> list[dict]:
    """A predictions_test.csv -> its rows, ``label`` an int and ``prob_covid`` a float, extra columns (``source``,
    ``patient``) as written; every value checked, an image named twice refused. ``expected``: the count
    metrics.json records (``n_test_predictions``), checked."""
    path = Path(path)
    return read_table(path, PREDICTION_COLUMNS, _prediction_row(path), lambda r: f"{r['file']} (label {r['label']})", expected,
                      f"the run's {METRICS_FILE} (n_test_predictions)", "Copy the file again from the run, or retrain the run.")


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


def copy_eval(src: str | Path, out: str | Path) -> Path:
    """A complete evaluation result copied into ``out``, in :func:`write_eval`'s order (metrics.json last)."""
    src, out = Path(src), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (EVAL_PREDICTIONS_FILE, METRICS_FILE):
        with atomic_path(out / name) as tmp:
            tmp.write_bytes((src / name).read_bytes())
    return out


def incomplete_results(root: str | Path) -> list[str]:
    """Names of the folders directly below ``root`` without a metrics.json: evaluations that were interrupted."""
    root = Path(root)
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not (d / METRICS_FILE).is_file()) if root.is_dir() else []


def read_eval_rows(path: str | Path, expected: int | None = None) -> list[dict[str, str]]:
    """The rows of one evaluation's predictions.csv as written (strings): ``path``, ``patient``, ``label``, ...
    ``prob_covid``; every label and probability checked, a path named twice refused, ``expected`` rows (metrics.json's
    ``n_images``) checked."""
    path = Path(path)

    def check(row: dict, line: int) -> dict:
        if row.get("label") not in (None, ""):
            check_label(path, line, row["label"])
        check_probability(path, line, row["prob_covid"])
        return row

    return read_table(path, ("path", "prob_covid"), check, lambda r: r["path"], expected, f"its {METRICS_FILE} (n_images)",
                      "Rerun the evaluation (the same evaluate.py command redoes it), or copy the folder again.")


def read_eval(out: str | Path) -> tuple[dict, list[dict[str, str]]]:
    """(metrics.json, prediction rows as written: ``path``, ``patient``, ``label``, ... ``prob_covid``) of one
    evaluation result written by :func:`write_eval`; rows as strings, as a rebuilt report's are
    (covidnet.report.bundle). A predictions file cut short or damaged raises ResultFileError."""
    out = Path(out)
    metrics = read_metrics(out / METRICS_FILE)
    if metrics is None:
        raise ResultFileError(f"{out} holds no {METRICS_FILE}: not a complete evaluation result.")
    n = metrics.get("n_images")
    return metrics, read_eval_rows(out / EVAL_PREDICTIONS_FILE, n if isinstance(n, int) else None)


def eval_results(root: str | Path) -> list[str]:
    """Names of the complete evaluation results (folders with a metrics.json) directly below ``root``, sorted."""
    root = Path(root)
    return sorted(d.name for d in root.iterdir() if (d / METRICS_FILE).is_file()) if root.is_dir() else []
