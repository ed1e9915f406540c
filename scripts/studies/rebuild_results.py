"""Recompute the committed results under docs/results/ from the predictions committed beside them.

- A sweep report folder (``report.md`` with ``predictions.csv`` and ``jobs.json``) is rebuilt by
  ``python -m covidnet.report --from-predictions <folder>``, with the bootstrap settings and margins it records.
- A several-sources study folder (``summary.md`` with ``predictions.csv`` and ``summary.json``) is recomputed by
  ``python scripts/studies/sources_study.py --from-predictions --out <folder>``.
- An external-study folder (``predictions.csv`` and ``jobs.json`` recording its groups) recomputes the markdown file
  beside it, named as the folder: ``python scripts/studies/external_study.py --from-predictions <folder> --out <folder>.md``.
- Any other folder holding a report (a ``.md`` file other than a README) has no committed predictions: it is listed as not
  recomputable, and nothing in it is changed.

    python scripts/studies/rebuild_results.py                 # docs/results
    python scripts/studies/rebuild_results.py --list          # only say what would be rebuilt and what cannot be
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SWEEP, SOURCES, EXTERNAL = "sweep report", "sources study", "external study"


def kind_of(folder: Path) -> str | None:
    """What a folder's committed predictions rebuild, or None when it has none."""
    if not (folder / "predictions.csv").is_file():
        return None
    if (folder / "jobs.json").is_file():
        return EXTERNAL if "groups" in json.loads((folder / "jobs.json").read_text()).get("report", {}) else SWEEP
    summary = folder / "summary.json"
    if summary.is_file() and "levels" in json.loads(summary.read_text()):
        return SOURCES
    return None


def survey(root: Path) -> tuple[dict[Path, str], list[Path]]:
    """(rebuildable folders and their kind, report files in folders without predictions)."""
    folders = sorted({root, *(p for p in root.rglob("*") if p.is_dir())})
    rebuildable = {folder: kind for folder in folders if (kind := kind_of(folder))}
    written = {folder.with_suffix(".md") for folder, kind in rebuildable.items() if kind == EXTERNAL}  # beside its folder
    missing = [p for folder in folders if folder not in rebuildable
               for p in sorted(folder.glob("*.md")) if p.name != "README.md" and p not in written]
    return rebuildable, missing


def study(name: str):
    """A study script of this folder as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def rebuild(folder: Path, kind: str) -> None:
    if kind == SWEEP:
        from covidnet.report import write_report

        write_report(folder, from_predictions=True)
        return
    with contextlib.redirect_stdout(io.StringIO()):  # the studies print what they write
        if kind == SOURCES:
            study("sources_study").main(["--from-predictions", "--out", str(folder)])
        else:
            study("external_study").main(["--from-predictions", str(folder), "--out", str(folder.with_suffix(".md"))])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="?", type=Path, default=ROOT / "docs" / "results")
    p.add_argument("--list", action="store_true", help="rebuild nothing; list what would be rebuilt and what cannot be")
    args = p.parse_args(argv)
    rebuildable, missing = survey(args.root)
    for folder, kind in rebuildable.items():
        if not args.list:
            rebuild(folder, kind)
        print(f"{'would rebuild' if args.list else 'rebuilt'} ({kind}): {folder}")
    for report in missing:
        print(f"not recomputable (no predictions committed beside it): {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
