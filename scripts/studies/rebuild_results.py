"""Recompute the committed results under docs/results/ from the predictions committed beside them.

- A sweep report folder (``report.md`` with ``predictions.csv`` and ``jobs.json``) is rebuilt by
  ``python -m covidnet.report --from-predictions <folder>``, with the bootstrap settings and margins it records.
- A several-sources study folder (``summary.md`` with ``predictions.csv`` and ``summary.json``) is recomputed by
  ``python scripts/studies/sources_study.py --from-predictions --out <folder>``.
- An external-study folder (``predictions.csv`` and ``jobs.json`` recording its groups) recomputes the markdown file
  beside it, named as the folder: ``python scripts/studies/external_study.py --from-predictions <folder> --out <folder>.md``.
- Any other folder holding a report (a ``.md`` file other than a README) has no committed predictions: it is listed as not
  recomputable, and nothing in it is changed.


Then it rewrites every **marked table** of README.md, CONTRIBUTING.md and docs/**/*.md from the report.json of the
report it names, so that a number quoted in the docs has one source:

    <!-- table:lite/final:answer -->        the answer box: one comparison, its interval, verdict and budget
    <!-- table:lite/final+lite/reference:arms -->   mean ± std over seeds per row of one or more reports
    <!-- table:lite/final:diffs -->         every paired difference of a report (test split and external sets)
    <!-- table:lite/cams:cams -->           CAM numbers per arm on COVID-SemiSeg, from that folder's results.json
    ... generated text, never edited by hand ...
    <!-- /table -->

The report is a folder under docs/results/ (``+`` joins several). Pointing a block at another report (a new study)
and running this script regenerates it; tests/test_docs_tables.py fails when a block and its report disagree.

    python scripts/studies/rebuild_results.py                 # docs/results, then the marked tables
    python scripts/studies/rebuild_results.py --tables        # only the marked tables (seconds)
    python scripts/studies/rebuild_results.py --check         # change nothing; exit 1 if a marked table is stale
    python scripts/studies/rebuild_results.py --list          # only say what would be rebuilt and what cannot be
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import re
import sys
from pathlib import Path

from covidnet.metrics import metric_registry

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


# --- marked tables -----------------------------------------------------------------------------------------------

MARK = re.compile(r"(^<!-- table:(?P<reports>[\w./+-]+):(?P<kind>\w+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S | re.M)
DEFAULT_RECIPE = {"data.image_size": "224", "trainer.max_epochs": "30"}  # conf/data, conf/trainer: the full budget
ARCH_NAMES = {"efficientnet_lite0": "EfficientNet-Lite0", "resnet18": "ResNet-18", "resnet50": "ResNet-50", "resnet152": "ResNet-152"}
INIT_NAMES = {"imagenet": "ImageNet weights", "scratch": "from scratch", "ct": "CT encoder weights"}
RECIPE_WORDS = {"callbacks.ema": "weight average", "model.label_smoothing": "label smoothing"}
SET_NAMES = {"test": "COVID-CT test split", "covid_ct_md": "COVID-CT-MD slices", "semiseg": "COVID-SemiSeg slices"}


class TableError(ValueError):
    """A marked table names a report or a kind that does not exist."""


def doc_pages(root: Path) -> list[Path]:
    pages = [root / "README.md", root / "CONTRIBUTING.md", *sorted((root / "docs").rglob("*.md"))]
    return [p for p in pages if p.is_file()]


def read_report(results: Path, name: str) -> dict:
    path = results / name / "report.json"
    if not path.is_file():
        raise TableError(f"{path} does not exist: a marked table names a report folder under docs/results/ written by covidnet.report")
    return json.loads(path.read_text())


def num(x, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def pm(pair) -> str:
    mean, std = pair if pair else (None, None)
    return num(mean) + ("" if std is None else f" ± {num(std)}")


def interval(iv, why: str | None = None) -> str:
    """``-0.11 to +0.38``, or why there is none (report.json's ``no_interval``: too few units per class, too few
    seeds, ...)."""
    if iv:
        return f"{num(iv[0], True)} to {num(iv[1], True)}"
    return f"no interval, {(why or 'not recorded').removeprefix('n/a: ')}"


def setting(report: dict, row: str, key: str, default: str = "?") -> str:
    return str(report["settings_by_row"].get(row, {}).get(key) or report["settings"].get(key) or default)


def model_name(report: dict, row: dict) -> str:
    arch = setting(report, row["row"], "model.arch")
    parts = [ARCH_NAMES.get(arch, arch)]
    for factor in report["factors"]:
        value = str(row[factor])
        parts.append(INIT_NAMES.get(value, value) if factor == "init" else f"{factor}={value}")
    return ", ".join(parts)


def budget(report: dict, row: str) -> str:
    size, epochs = setting(report, row, "data.image_size"), setting(report, row, "trainer.max_epochs")
    reduced = any(setting(report, row, k) != v for k, v in DEFAULT_RECIPE.items())
    return f"{size} px, {epochs} epochs" + (" (a reduced budget)" if reduced else "")


def arms_table(reports: list[tuple[str, dict]]) -> list[str]:
    externals = []
    for _, rep in reports:
        externals += [s for s in rep["external"] if s not in externals]
    header = ["model", "budget", "lr", "seeds", "test AUROC", "test accuracy", "sensitivity", "specificity"]
    header += [f"{SET_NAMES.get(s, s)}: AUROC" if rep_has_auroc(reports, s) else f"{SET_NAMES.get(s, s)}: sensitivity" for s in externals]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, rep in reports:
        for row in rep["summary"]:
            label = row["row"]
            cells = [model_name(rep, row), budget(rep, label), setting(rep, label, "model.optimizer.lr"), str(row["runs"]),
                     pm(row["auroc"]), pm(row["acc"]), pm(row["sensitivity"]), pm(row["specificity"])]
            for s in externals:
                ext = rep["external"].get(s, {}).get("rows", {}).get(",".join(label.split(", ")))
                key = "slice auroc" if rep_has_auroc(reports, s) else "slice sensitivity"
                cells.append(pm(ext.get(key)) if ext else "not run")
            lines.append("| " + " | ".join(cells) + " |")
    sources = ", ".join(f"[{n}](docs/results/{n}/report.md)" for n, _ in reports)
    lines += ["", f"Mean ± std over seeds; P(COVID) > 0.5 is a COVID call. From report.json of {sources}."]
    return lines


def rep_has_auroc(reports: list[tuple[str, dict]], set_name: str) -> bool:
    return any(any((r.get("slice auroc") or [None])[0] is not None for r in rep["external"].get(set_name, {}).get("rows", {}).values())
               for _, rep in reports)


def units(c: dict) -> str:
    """``203 images`` or ``297 slices of 6 patients, patients resampled``."""
    return f"{c['n']} slices of {c['n_patients']} patients, patients resampled" if c.get("n_patients") else f"{c['n']} images"


def diffs_table(reports: list[tuple[str, dict]]) -> list[str]:
    header = ["difference", "on", "metric", "estimate", "95 % interval over seeds and images", "verdict", "for these trained models (images only)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, rep in reports:
        for c in rep["comparisons"]:
            where = f"{SET_NAMES.get(c['set'], c['set'])} ({units(c)})"
            context = "" if c["context"] == "all runs" else f" ({c['context']})"
            for metric, d in c["metrics"].items():
                lines.append("| " + " | ".join([f"{c['arm']} − {c['reference']}{context}", where, metric_registry.words(metric),
                                                 num(d["estimate"], True), interval(d["seeds_and_images"], d.get("no_interval", {}).get("seeds_and_images")),
                                                 d["verdict"], interval(d["images_only"], d.get("no_interval", {}).get("images_only"))]) + " |")
    return lines


def answer_box(reports: list[tuple[str, dict]]) -> list[str]:
    (name, rep), = reports
    test = [c for c in rep["comparisons"] if c["set"] == "test"]
    if len(test) != 1:
        raise TableError(f"{name}: an answer box needs a report with exactly one in-split comparison, it has {len(test)}")
    c = test[0]
    arm_row = next(r for r in rep["summary"] if r["row"].endswith(f"={c['arm']}") or r["row"] == c["arm"])
    ref_row = next(r for r in rep["summary"] if r["row"].endswith(f"={c['reference']}") or r["row"] == c["reference"])
    arch = ARCH_NAMES.get(setting(rep, arm_row["row"], "model.arch"), setting(rep, arm_row["row"], "model.arch"))
    arm, ref = INIT_NAMES.get(c["arm"], c["arm"]), INIT_NAMES.get(c["reference"], c["reference"])
    a = c["metrics"]["auroc"]
    out = [
        f"> **{arch}, {arm} minus {ref}, COVID-CT test split ({c['n']} images): "
        f"{num(a['estimate'], True)} test AUROC**, 95 % interval over seeds and test images {interval(a['seeds_and_images'], a.get('no_interval', {}).get('seeds_and_images'))}: "
        f"**{a['verdict']}** (AUROC {pm(arm_row['auroc'])} against {pm(ref_row['auroc'])}, mean ± std over seeds).",
    ]
    outside = [x for x in rep["comparisons"] if x["set"] != "test" and x["arm"].endswith(c["arm"]) and x["reference"].endswith(c["reference"])]
    if outside:
        parts = []
        for x in outside:
            metric = "auroc" if "auroc" in x["metrics"] else next(iter(x["metrics"]))
            d = x["metrics"][metric]
            parts.append(f"{SET_NAMES.get(x['set'], x['set'])} ({units(x)}) {metric_registry.words(metric)} "
                         f"{num(d['estimate'], True)} ({interval(d['seeds_and_images'], d.get('no_interval', {}).get('seeds_and_images'))}: {d['verdict']})")
        out += [">", "> Other CT sources: " + "; ".join(parts) + "."]
    out += ensemble_line(rep, [arm_row, ref_row])
    lrs = []
    for r in (arm_row, ref_row):
        lr = f"{INIT_NAMES.get(r[rep['factors'][0]], r['row'])} lr {setting(rep, r['row'], 'model.optimizer.lr')}"
        scale = setting(rep, r["row"], "model.backbone_lr_scale", "")
        lr += f" (backbone at x{scale} of it)" if scale and r is arm_row else ""
        recipe = [f"{RECIPE_WORDS.get(k, k)} {'none' if v == 'null' else v}" for k, v in rep["settings_by_row"].get(r["row"], {}).items()
                  if k not in ("model.optimizer.lr", "model.backbone_lr_scale")]  # what else differs between the arms
        lrs.append(", ".join([lr, *recipe]))
    lrs = "; ".join(lrs)
    out += [">", f"> Holds for: {arch} at {budget(rep, arm_row['row'])}, {arm_row['runs']} / {ref_row['runs']} seeds per arm, "
                 f"{lrs} (chosen per arm on validation AUROC). Report: [docs/results/{name}](docs/results/{name}/report.md)."]
    return out


def ensemble_line(rep: dict, rows: list[dict]) -> list[str]:
    """Each arm's seeds scored as one model (the mean of their P(COVID)) on the test split, with its interval over
    test images; nothing when the report has no ensembles (one seed per arm)."""
    test = (rep.get("ensembles") or {}).get("sets", {}).get("test", {})
    parts = []
    for r in rows:
        e = test.get(r["row"])
        if e and rep["ensembles"]["n_runs"].get(r["row"], 0) > 1:
            auroc, acc = e["auroc"], e["acc"]
            iv = (f"{num(auroc['low'])} to {num(auroc['high'])}" if auroc["low"] is not None
                  else f"no interval, {(auroc.get('note') or 'not recorded').removeprefix('n/a: ')}")
            parts.append(f"{INIT_NAMES.get(r[rep['factors'][0]], r['row'])} AUROC {num(auroc['estimate'])} ({iv}), "
                         f"accuracy {num(acc['estimate'])}")
    if not parts:
        return []
    n = rep["ensembles"]["n_runs"][rows[0]["row"]]
    return [">", f"> Each arm's {n} seeds as one model (the mean of their P(COVID); 95 % interval over test images): "
                 + "; ".join(parts) + "."]


def cams_table(results: Path, name: str) -> list[str]:
    """The CAM numbers of a study's runs on COVID-SemiSeg (``<name>/results.json``, gathered from visualize.py): per
    arm and method mean ± std over runs with the empty maps counted, then each arm minus scratch with its interval
    over seeds and slices (scripts/studies/cam_summary.py)."""
    path = results / name / "results.json"
    if not path.is_file():
        raise TableError(f"{path} does not exist: a cams table names a folder under docs/results/ holding the CAM "
                         f"results.json of a study's runs (visualize.py localize=..., gathered per study)")
    with contextlib.redirect_stdout(io.StringIO()):
        summary = study("cam_summary").summarize(json.loads(path.read_text()))
    return [*summary.splitlines(), "", f"From [{name}/results.json](docs/results/{name}/results.json) "
            f"(`python scripts/studies/cam_summary.py docs/results/{name}/results.json`)."]


KINDS = {"answer": answer_box, "arms": arms_table, "diffs": diffs_table}


def render_table(results: Path, reports: str, kind: str) -> str:
    if kind == "cams":
        return "\n".join(cams_table(results, reports)) + "\n"
    if kind not in KINDS:
        raise TableError(f"unknown table kind {kind!r} (known: {', '.join([*KINDS, 'cams'])})")
    loaded = [(name, read_report(results, name)) for name in reports.split("+")]
    return "\n".join(KINDS[kind](loaded)) + "\n"


def relink(text: str, page: Path, root: Path) -> str:
    """Links in a generated block are written from the repository root; rewrite them relative to ``page``."""
    if page.parent == root:
        return text
    return re.sub(r"\]\((docs/[^)]*)\)", lambda m: f"]({Path(os.path.relpath(root / m.group(1), page.parent)).as_posix()})", text)


def update_tables(root: Path, check: bool = False) -> list[str]:
    """Rewrite (or with ``check`` only compare) every marked table under ``root``; return the stale ones."""
    results = root / "docs" / "results"
    stale = []
    for page in doc_pages(root):
        text = page.read_text()

        def fill(m: re.Match, page: Path = page) -> str:
            body = relink(render_table(results, m["reports"], m["kind"]), page, root)
            if body != m["body"]:
                stale.append(f"{page.relative_to(root)}: table:{m['reports']}:{m['kind']}")
            return m.group(1) + body + m.group(5)

        new = MARK.sub(fill, text)
        if new != text and not check:
            page.write_text(new)
    return stale


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="?", type=Path, default=ROOT / "docs" / "results")
    p.add_argument("--list", action="store_true", help="rebuild nothing; list what would be rebuilt and what cannot be")
    p.add_argument("--tables", action="store_true", help="only rewrite the marked tables of the docs from the committed report.json files")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a marked table differs from its report")
    args = p.parse_args(argv)
    if args.check or args.tables:
        stale = update_tables(ROOT, check=args.check)
        for line in stale:
            print(f"{'stale' if args.check else 'rewritten'}: {line}")
        return 1 if (args.check and stale) else 0
    rebuildable, missing = survey(args.root)
    for folder, kind in rebuildable.items():
        if not args.list:
            rebuild(folder, kind)
        print(f"{'would rebuild' if args.list else 'rebuilt'} ({kind}): {folder}")
    for report in missing:
        print(f"not recomputable (no predictions committed beside it): {report}")
    if not args.list and args.root.resolve() == (ROOT / "docs" / "results").resolve():
        for line in update_tables(ROOT):
            print(f"rewritten: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
