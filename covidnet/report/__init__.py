"""Sweep report: does transfer help, by how much, and how sure are we?

``python -m covidnet.report <sweep dir> [--cam] [--margin auroc=0.05]`` reads every job directory of a sweep
(as written by ``covidnet.apps.train``, read through ``covidnet.rundirs.runs``) and writes, into the sweep directory:

- ``report.md``: settings, a summary table per init (and per other swept key), mean +- std over seeds;
  each init against ``scratch`` on the same test images, with the interval over seeds and images behind
  the verdict (better / worse / equivalent / not resolved / not enough seeds to judge) and the one for
  these trained models (images only); every run with 95% bootstrap intervals; failed, interrupted, not
  trained and never-started jobs; figures.
- ``summary.csv`` (one row per group) and ``runs.csv`` (one row per job, with intervals).
- ``roc.png``, ``learning_curves.png`` and, when ``data.fraction`` was swept, ``data_efficiency.png``.
- ``predictions.csv`` and ``jobs.json``: what all of it is computed from (``bundle``), so that
  ``python -m covidnet.report --from-predictions <folder>`` rebuilds a copied report folder without the runs.

These files are derived data: they are rewritten from the job directories each time the report runs
(at the end of every multirun, see ``covidnet.apps.hydra_callbacks.SweepReport``, or by hand for a sweep
that was interrupted or run in pieces). The job directories themselves are only read.

The package, by concern: ``sweep`` (reading a sweep: runs, their status, the swept factors),
``scoring`` (bootstrap intervals, seed means, paired comparisons), ``figures``, ``cam`` (the CAM step
through ``covidnet.trained.visualization.visualize_runs``), ``render`` (section types, formatting, the header),
``sections`` (the ordered list of section builders: how to add a section or column group), ``bundle``
(the predictions a report folder carries, and reading them back), ``write`` (report.md, the CSVs, the
command line).
"""

from covidnet.report.figures import read_curves
from covidnet.report.render import Context, Section
from covidnet.report.sections import SECTIONS, build_sections
from covidnet.report.sweep import REFERENCE_INIT, ReportError, Run, Sweep, load_sweep
from covidnet.report.write import main, write_report

__all__ = ["SECTIONS", "REFERENCE_INIT", "Context", "ReportError", "Run", "Section", "Sweep", "build_sections", "load_sweep",
           "main", "read_curves", "write_report"]
