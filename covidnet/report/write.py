"""Writing a sweep report: score the sweep, build its sections, write report.md and the CSVs; the
command line (``python -m covidnet.report``)."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from covidnet.metrics import stats
from covidnet.core.atomic import atomic_path, write_text
from covidnet.trained.external_summary import margin_arg
from covidnet.report.bundle import load_bundle, read_options, write_bundle
from covidnet.report.numbers import write_record
from covidnet.report.provenance import PROVENANCE, collect, environment_versions
from covidnet.report.render import Context, render
from covidnet.report.scoring import comparisons, run_rows, score_runs, summary_rows
from covidnet.report.sections import build_sections
from covidnet.report.sweep import ReportError, load_sweep


def write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def write_report(sweep_dir: str | Path, cam: bool = False, n_boot: int | None = None, seed: int | None = None,
                 failures: dict[str, str] | None = None, cam_overrides: list[str] | None = None,
                 margins: dict[str, float] | None = None, from_predictions: bool = False) -> Path:
    """Write report.md, summary.csv, runs.csv, the figures and the predictions they come from (covidnet.report.bundle)
    into the sweep directory; return report.md's path.

    ``margins``: equivalence margins per metric (``{"auroc": 0.05}``), stated before the runs; without one no
    comparison is called equivalent. ``from_predictions``: ``sweep_dir`` is a report folder; rebuild it from its
    predictions.csv and jobs.json, with the bootstrap settings, margins, provenance and first-written line recorded
    there (the settings unless given), so that a rebuild with the recorded settings rewrites the folder unchanged."""
    written = None
    if from_predictions:
        recorded = read_options(sweep_dir)
        if cam:
            raise ReportError("--cam needs the runs' checkpoints; a report rebuilt from its predictions has none.")
        sweep = load_bundle(sweep_dir)
        same = n_boot in (None, recorded.get("n_boot")) and seed in (None, recorded.get("seed")) and margins in (None, recorded.get("margins"))
        written = recorded.get("written") if same else None
        n_boot, seed = recorded.get("n_boot") if n_boot is None else n_boot, recorded.get("seed") if seed is None else seed
        margins = recorded.get("margins") if margins is None else margins
        prov = dict(recorded.get(PROVENANCE) or {})
    else:
        # the job directories are the source here: a previous report's jobs.json only lends what was given by hand
        # (a study command, a machine description), and a damaged one is rewritten rather than blocking the report
        try:
            recorded = read_options(sweep_dir)
        except ReportError as err:
            print(f"note: {err} It is written anew from the job directories.")
            recorded = {}
        sweep = load_sweep(sweep_dir, failures)
        prov = collect(sweep.runs, recorded.get(PROVENANCE))
        prov["versions"] = environment_versions()  # of the environment writing the report now, as the report says
        prov.pop("versions_from", None)
    n_boot = stats.DEFAULT_BOOT if n_boot is None else n_boot
    seed = stats.DEFAULT_SEED if seed is None else seed
    margins = dict(margins or {})
    score_runs(sweep, n_boot, seed)
    ctx = Context(sweep, summary_rows(sweep), run_rows(sweep), comparisons(sweep, n_boot, seed, margins), n_boot, seed,
                  {"cam": cam, "cam_overrides": list(cam_overrides or []), "margins": margins, PROVENANCE: prov,
                   "written": written})
    sections = build_sections(ctx)  # may add columns to ctx.summary / ctx.runs
    write_csv(sweep.path / "summary.csv", ctx.summary)
    write_csv(sweep.path / "runs.csv", ctx.runs)
    text = render(ctx, sections)  # fixes ctx.options["written"], recorded in jobs.json
    write_record(ctx, sweep.path)
    write_bundle(sweep, sweep.path, {"n_boot": n_boot, "seed": seed, "margins": margins, "written": ctx.options["written"],
                                     PROVENANCE: prov})
    path = sweep.path / "report.md"
    write_text(path, text + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covidnet.report", description="Sweep report: does transfer help, by how much, and how sure are we?")
    parser.add_argument("sweep_dir", help="a sweep directory, e.g. logs/train/multiruns/<stamp> (with --from-predictions: a report folder)")
    parser.add_argument("--from-predictions", action="store_true",
                        help="rebuild the report in SWEEP_DIR from its predictions.csv and jobs.json (no job directories needed)")
    parser.add_argument("--cam", action="store_true", help="also compute the CAM numbers of each run's best checkpoint")
    parser.add_argument("--cam-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a visualize.py setting for --cam, e.g. localize=../shared/data/covid-semiseg or device=cuda (repeatable)")
    parser.add_argument("--n-boot", type=int, help=f"bootstrap resamples (default {stats.DEFAULT_BOOT}; with --from-predictions, as recorded)")
    parser.add_argument("--seed", type=int, help=f"bootstrap seed (default {stats.DEFAULT_SEED}; with --from-predictions, as recorded)")
    parser.add_argument("--margin", action="append", metavar="METRIC=VALUE", type=margin_arg,
                        help="equivalence margin stated before the runs, e.g. auroc=0.05 (repeatable; none: no equivalence claim; "
                             "with --from-predictions, as recorded)")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.sweep_dir, cam=args.cam, n_boot=args.n_boot, seed=args.seed, cam_overrides=args.cam_set,
                            margins=None if args.margin is None else dict(args.margin), from_predictions=args.from_predictions)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Report written: {path}")
    return 0
