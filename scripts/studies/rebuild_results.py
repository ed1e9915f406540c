"""Recompute the committed results under docs/results/ from the predictions committed beside them.

- A sweep report folder (``report.md`` with ``predictions.csv`` and ``jobs.json``) is rebuilt by
  ``python -m covidnet.report --from-predictions <folder>``, with the bootstrap settings and margins it records.
- A several-sources study folder (``summary.md`` with ``predictions.csv`` and ``summary.json``) is recomputed by
  ``python scripts/studies/sources_study.py --from-predictions --out <folder>``.
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
SWEEP, SOURCES = "sweep report", "sources study"


def kind_of(folder: Path) -> str | None:
    """What a folder's committed predictions rebuild, or None when it has none."""
    if not (folder / "predictions.csv").is_file():
        return None
    if (folder / "jobs.json").is_file():
        return SWEEP
    summary = folder / "summary.json"
    if summary.is_file() and "levels" in json.loads(summary.read_text()):
        return SOURCES
    return None


def survey(root: Path) -> tuple[dict[Path, str], list[Path]]:
    """(rebuildable folders and their kind, report files in folders without predictions)."""
    rebuildable, missing = {}, []
    for folder in sorted({root, *(p for p in root.rglob("*") if p.is_dir())}):
        kind = kind_of(folder)
        if kind:
            rebuildable[folder] = kind
        else:
            missing += sorted(p for p in folder.glob("*.md") if p.name != "README.md")
    return rebuildable, missing


def rebuild(folder: Path, kind: str) -> None:
    if kind == SWEEP:
        from covidnet.report import write_report

        write_report(folder, from_predictions=True)
    else:
        spec = importlib.util.spec_from_file_location("sources_study", Path(__file__).with_name("sources_study.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["sources_study"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the summary it writes
            module.main(["--from-predictions", "--out", str(folder)])


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
