"""The predictions behind a sweep report, in two files its folder carries, so anyone can recompute every number.

A job directory holds checkpoints, TensorBoard events and (for external sets) copies of file lists: too much to
commit, and a report copied out of its sweep used to lose what it was computed from. ``write_report`` therefore
also writes, beside report.md:

- ``predictions.csv``: one row per image of each set a job predicted: ``set`` (``test``: the job's own test split;
  else an external set's name), ``path`` (file name as the job recorded it), ``label`` (1 = COVID), ``patient``
  (blank where the set has none), then one column per job, named as the job, holding its P(COVID) (blank: that
  job has no prediction for the image). No image, only names, labels and probabilities;
- ``jobs.json``: the sweep (its name, command, swept factors and reference levels, the report's bootstrap settings and
  equivalence margins) and per job what the report reads besides predictions: status and message, overrides,
  the metrics.json entries in ``METRIC_KEYS``, the config entries in ``CONFIG_KEYS`` (the settings the report's
  header shows), validation curves, and per external set its metrics.json (counts and metrics per subset).

``python -m covidnet.report --from-predictions <folder>`` reads them back (``load_bundle``) and rewrites report.md,
summary.csv, runs.csv, the figures and these two files; with the recorded bootstrap settings the numbers are the
same as those of the report written from the job directories. The CAM section needs checkpoints and is not rebuilt.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from covidnet.core.atomic import atomic_path, write_text
from covidnet.core.errors import ResultFileError
from covidnet.report.figures import read_curves
from covidnet.report.render import SETTING_KEYS
from covidnet.report.sweep import ReportError, Run, Sweep, dig
from covidnet.rundirs.run_files import check_label, check_probability, read_table

PREDICTIONS = "predictions.csv"
JOBS = "jobs.json"
TEST_SET = "test"
FORMAT = 1
# metrics.json entries the report reads (summary columns, per-source section, data-efficiency figure, seed), and
# the test metrics training logged (scripts/studies/external_study.py's in-split columns)
METRIC_KEYS = ("seed", "init", "best_epoch", "epochs_trained", "best_val_score", "fit_seconds", "train_images", "test_by_source", "test")
# config entries the report reads: the settings its header shows, and the init a job without an override had
CONFIG_KEYS = (*SETTING_KEYS, "model.init")
_MISSING = object()
_FIX = "Copy the report folder again, or write it anew from its sweep: python -m covidnet.report <sweep dir>."


def _eval_part(metrics: dict) -> dict:
    """An external set's metrics.json without what only describes the machine that evaluated (``root``, ``notes``):
    its counts, and the metrics per image subset and per patient aggregation that the external tables read."""
    return {k: v for k, v in metrics.items() if k not in ("root", "notes")}


def _settings(config: dict) -> dict:
    """``CONFIG_KEYS`` of a job's config as a nested dict (what ``dig`` reads)."""
    out: dict = {}
    for key in CONFIG_KEYS:
        value = dig(config, key, _MISSING)
        if value is _MISSING:
            continue
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def write_bundle(sweep: Sweep, folder: Path, options: dict) -> None:
    """predictions.csv and jobs.json of ``sweep`` into ``folder``. ``options``: what the report was written with
    (n_boot, seed, margins; a study may add its own), recorded as given."""
    columns: dict[tuple[str, str], dict] = {}  # (set, path) -> {"label", "patient", job: prob}
    jobs = []
    for r in sweep.runs:
        for (path, label), prob in r.predictions.items():
            columns.setdefault((TEST_SET, path), {"label": label, "patient": ""})[r.name] = prob
        evals = r.eval_results()
        for name, (_, rows) in evals.items():
            if name == TEST_SET:
                raise ReportError(f"{r.name}: an external set named {TEST_SET!r} would mix with the test split in {PREDICTIONS}.")
            for row in rows:
                cell = columns.setdefault((name, row["path"]), {"label": int(row["label"]), "patient": row.get("patient") or ""})
                cell[r.name] = float(row["prob_covid"])
        curves = r.curves
        if curves is None and r.ok and r.path is not None:
            try:
                curves = read_curves(r.path)
            except Exception:  # noqa: BLE001 - a damaged events file costs its curve (the report says so), not the bundle
                curves = {}
        jobs.append({
            "name": r.name, "status": r.status, "message": r.message, "overrides": r.overrides, "params": r.params,
            "metrics": {k: r.metrics[k] for k in METRIC_KEYS if k in r.metrics},
            "config": _settings(r.config),
            "curves": {tag: [list(p) for p in points] for tag, points in (curves or {}).items()},
            "evals": {name: _eval_part(metrics) for name, (metrics, _) in evals.items()},
            # what predictions.csv must give back for this job (load_bundle checks it)
            "n_predictions": {TEST_SET: len(r.predictions), **{name: len(rows) for name, (_, rows) in evals.items()}},
            "incomplete_evals": r.incomplete_evals(),
        })
    names = [r.name for r in sweep.runs if any(r.name in c for c in columns.values())]
    with atomic_path(folder / PREDICTIONS) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set", "path", "label", "patient", *names])
        for (set_name, path), cell in columns.items():
            w.writerow([set_name, path, cell["label"], cell["patient"], *(repr(cell[n]) if n in cell else "" for n in names)])
    record = {"format": FORMAT, "sweep": sweep.name or sweep.path.name, "command": sweep.command, "commands": sweep.commands, "factors": sweep.factors, "references": sweep.references,
              "n_rows": len(columns),
              "report": {"margins": {}, **options},
              "jobs": jobs}
    write_text(folder / JOBS, json.dumps(record, indent=1) + "\n")


def read_options(folder: str | Path) -> dict:
    """The bootstrap settings and margins a bundle's report was written with (``{}`` when not recorded)."""
    path = Path(folder) / JOBS
    return _read_jobs(path).get("report", {}) if path.is_file() else {}


def _read_jobs(path: Path) -> dict:
    """jobs.json, refused in one line when it is not the JSON the report wrote (cut short by a copy, edited)."""
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not valid JSON ({err.msg}, line {err.lineno}): truncated or damaged. {_FIX}") from err
    if not isinstance(record, dict) or not isinstance(record.get("jobs"), list):
        raise ReportError(f"{path} does not hold a report's job list. {_FIX}")
    if record.get("format") != FORMAT:
        raise ReportError(f"{path}: format {record.get('format')!r}, this version reads format {FORMAT}.")
    return record


def _read_rows(path: Path, names: list[str], expected: int | None) -> list[dict]:
    """predictions.csv through the one table reader: every label 0 or 1, every job's P(COVID) a probability or blank,
    each (set, path) once, as many rows as jobs.json records."""
    def check(row: dict, line: int) -> dict:
        check_label(path, line, row["label"])
        for name in names:
            if row.get(name):
                check_probability(path, line, row[name], name)
        return row

    try:
        return read_table(path, ("set", "path", "label"), check, lambda r: f"{r['set']}/{r['path']}", expected, f"{JOBS} (n_rows)", _FIX)
    except ResultFileError as err:
        raise ReportError(str(err)) from err


def _check_counts(folder: Path, job: dict, run: Run) -> None:
    """Each job's predictions per set as many as jobs.json records (a blanked or removed cell is refused)."""
    found = {TEST_SET: len(run.predictions), **{name: len(rows) for name, (_, rows) in (run.evals or {}).items()}}
    for set_name, n in (job.get("n_predictions") or {}).items():
        if found.get(set_name, 0) != n:
            raise ReportError(f"{folder / PREDICTIONS}: job {job['name']} has {found.get(set_name, 0)} predictions on {set_name}; "
                              f"{JOBS} records {n}. The file was cut short or edited. {_FIX}")


def load_bundle(folder: str | Path) -> Sweep:
    """The sweep a report folder's predictions.csv and jobs.json describe: its runs with their predictions, external
    evaluations, metrics and curves, and no job directory (``Run.path`` None). Both files are checked as read: a file
    cut short, a value that is no probability or label, a duplicated row or a count unlike the recorded one is refused."""
    folder = Path(folder)
    if not (folder / JOBS).is_file() or not (folder / PREDICTIONS).is_file():
        raise ReportError(f"{folder} holds no {PREDICTIONS} and {JOBS}: pass a report folder written by `python -m covidnet.report`.")
    record = _read_jobs(folder / JOBS)
    rows = _read_rows(folder / PREDICTIONS, [job["name"] for job in record["jobs"]], record.get("n_rows"))
    runs = []
    for job in record["jobs"]:
        name = job["name"]
        run = Run(name=name, path=None, overrides=job["overrides"], status=job["status"], message=job["message"],
                  metrics=job["metrics"], config=job["config"])
        mine = [row for row in rows if row.get(name)]
        run.predictions = {(row["path"], int(row["label"])): float(row[name]) for row in mine if row["set"] == TEST_SET}
        run.evals = {}
        for set_name, metrics in job["evals"].items():
            run.evals[set_name] = (metrics, [{"path": row["path"], "label": row["label"], "patient": row["patient"], "prob_covid": row[name]}
                                             for row in mine if row["set"] == set_name])
        run.curves = {tag: [(int(e), float(v)) for e, v in points] for tag, points in job["curves"].items()}
        run.params = job["params"]
        run.incomplete = job.get("incomplete_evals") or []
        _check_counts(folder, job, run)
        runs.append(run)
    return Sweep(folder.resolve(), record["command"], runs, record["factors"], record["references"], source=f"--from-predictions {folder}",
                 name=record["sweep"], commands=record.get("commands") or [])
