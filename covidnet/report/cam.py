"""The CAM step of a sweep report: covidnet.trained.visualization (what visualize.py runs) on each complete run's best checkpoint, and the
per-row means of its faithfulness, shortcut and localisation numbers."""

from __future__ import annotations

import json
from pathlib import Path

from covidnet.metrics import stats
from covidnet.report.render import Context, Section, md_table, pm
from covidnet.report.scoring import ordered_groups
from covidnet.report.sweep import ReportError, Run, Sweep, dig


def run_cam(sweep: Sweep, overrides: list[str]) -> tuple[Path, dict, dict[str, str]]:
    """CAM numbers of every complete run's best checkpoint, by ``covidnet.trained.visualization.visualize``.

    Results live in ``<sweep>/cam/results.json`` (then ``cam-2``, ...): an earlier computation for the
    same runs is reused; visualize never overwrites one. Returns (folder, results, {run name: model name}).
    """
    from covidnet.trained.visualization import VisualizeError, visualize_runs  # lazy: import cost (torch, the models), for the CAM step only

    run_dirs = {str(r.path.resolve()): r.name for r in sweep.complete if r.run_dir.checkpoint_dir.is_dir()}
    if not run_dirs:
        raise ReportError("No complete run has a checkpoints/ folder to compute CAMs from.")

    def models_by_run(results: dict) -> dict[str, str]:
        # visualize records each model's run directory (older results: its checkpoint, <run dir>/checkpoints/<file>.ckpt)
        return {run_dirs.get(str(Path(m.get("run_dir") or Path(m["checkpoint"]).parent.parent).resolve()), "?"): name
                for name, m in results.get("models", {}).items()}

    n = 1
    while True:
        out = sweep.path / ("cam" if n == 1 else f"cam-{n}")
        results_file = out / "results.json"
        if results_file.is_file():
            results = json.loads(results_file.read_text())
            if set(models_by_run(results)) == set(run_dirs.values()):
                return out, results, models_by_run(results)
        elif not out.exists():
            break
        n += 1
    data_root = next((dig(r.config, "data.root") for r in sweep.complete if dig(r.config, "data.root")), None)
    try:
        visualize_runs(sorted(run_dirs), data_root, out, settings=overrides)  # a run directory stands for its best checkpoint
    except VisualizeError as err:
        raise ReportError(f"--cam-set: {err}") from err
    results = json.loads((out / "results.json").read_text())
    return out, results, models_by_run(results)


def cam_section(ctx: Context) -> Section:
    """Per row of the summary: mean over runs of visualize's faithfulness, shortcut and localisation numbers
    (computed only when asked: ``ctx.options['cam']``, settings in ``ctx.options['cam_overrides']``)."""
    return Section("Class activation maps", cam_lines(ctx.sweep, bool(ctx.options.get("cam")), ctx.options.get("cam_overrides")))


def cam_lines(sweep: Sweep, compute: bool, overrides: list[str] | None = None) -> list[str]:
    if not compute:
        return ["Not computed. `python -m covidnet.report <sweep dir> --cam` adds the CAM numbers of each run's best checkpoint "
                "(covidnet.apps.visualize; `--cam-set localize=../shared/data/covid-semiseg` adds lesion localisation)."]
    try:
        out, results, model_of = run_cam(sweep, overrides or [])
    except Exception as err:  # noqa: BLE001 - an optional section must not cost the rest of the report
        return [f"Asked for, but not computed: {type(err).__name__}: {err}", "",
                "Fix the cause (see covidnet.apps.visualize / conf/visualize.yaml; `--cam-set key=value` passes its settings) and rerun the report."]
    methods = results.get("methods", [])

    def mean_of(runs: list[Run], section: str, *path: str) -> str:
        vals = []
        for r in runs:
            name = model_of.get(r.name)
            node = (results.get(section) or {}).get(name) if name else None
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and node.get("mean") is not None:
                vals.append(float(node["mean"]))
        return pm(*stats.mean_std(vals)) if vals else "–"

    groups = ordered_groups([r for r in sweep.complete if r.name in model_of], sweep.factors)
    header = sweep.factors + ["runs"]
    for m in methods:
        header += [f"{m}: confidence drop", f"{m}: CAM mass in lungs"]
    header += ["block-random-map drop", "lung-field area"]
    local = bool(results.get("localisation"))
    if local:
        for m in methods:
            header += [f"{m}: pointing-game hits", f"{m}: CAM mass in lesion"]
        header += ["lesion area", "SemiSeg sensitivity"]
    table = []
    for key, runs in groups.items():
        row = list(key) + [str(len(runs))]
        for m in methods:
            row += [mean_of(runs, "faithfulness", m, "prob_drop"), mean_of(runs, "shortcut", m)]
        row += [mean_of(runs, "faithfulness", "block_random", "prob_drop"), mean_of(runs, "shortcut", "lung_area")]
        if local:
            for m in methods:
                row += [mean_of(runs, "localisation", m, "pointing_game_hit_rate"), mean_of(runs, "localisation", m, "mass_in_lesion")]
            row += [mean_of(runs, "localisation", "lesion_area_share"), mean_of(runs, "localisation", "sensitivity")]
        table.append(row)
    rel = out.relative_to(sweep.path)
    lines = [
        f"From `{rel}/results.json` (covidnet.apps.visualize on each run's best checkpoint; figure `{rel}/figure.png`, per image "
        f"`{rel}/images.csv`): {results.get('n_scored')} {results.get('split')} images, GradCAM target = {results.get('target')}, "
        f"{results.get('faithfulness_fraction')} of the pixels removed for the confidence drop. Values are the mean ± std over the "
        "runs of a row of each run's mean over images.",
        "",
        *md_table(header, table),
        "",
        "Reading: a faithful map loses more confidence than a random map when its top pixels are removed; CAM mass in the "
        "lungs (covidnet/images/lungs.py's lung field) below the lung-field area means the model looks elsewhere (frame, text, body "
        "wall) more than a uniform map would. SemiSeg sensitivity: share of the COVID-SemiSeg slices (all COVID) with P >= 0.5.",
    ]
    if not local:
        lines += ["", "Lesion localisation not computed: add `--cam-set localize=<COVID-SemiSeg folder>`."]
    for name, why in (results.get("not_computed") or {}).items():  # a map too coarse to localise: its cells are "–"
        lines += ["", f"No CAM numbers for {name}: {why}."]
    return lines
