"""What ran: the report section that says which commands, settings, machine and versions produced the numbers.

A sweep is often run in pieces (one multirun per arm, per seed, or a study script that chooses a learning rate per
arm first), so the last ``multirun.yaml`` of a sweep directory does not describe every job. This section therefore
rebuilds the commands from each job's own overrides (its ``.hydra/overrides.yaml``): one ``python train.py -m`` line
per distinct setting, its seeds joined. It lists every setting that differs between jobs (per-arm learning rates,
backbone scales, ...) by summary row, and the machine and versions:

- the machine: each job's ``metrics.json`` ``hardware`` entry (device, precision), as recorded by training;
- versions: those of the Python environment that wrote the report from the job directories (at the end of a
  multirun: the training environment), recorded in jobs.json;
- a study command, a machine description or versions given by hand (``jobs.json`` ``report.provenance``), e.g.
  for a report written before this section existed.

Everything shown is recorded in jobs.json (``report.provenance``), so a report rebuilt from its predictions says the
same, whatever machine rebuilds it.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform

from covidnet.report.render import NOT_RECORDED, SETTING_KEYS, Context, Section, md_table, setting_text, settings_source
from covidnet.report.sweep import REPLICATE_KEY, Run, dig

VERSION_PACKAGES = ("covidnet", "torch", "torchvision", "lightning", "timm", "numpy")
PROVENANCE = "provenance"  # the key of jobs.json's "report" entry


def environment_versions() -> dict[str, str]:
    """Python and the versions of the packages that compute the numbers, in this environment."""
    out = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def machines(runs: list[Run]) -> list[str]:
    """The distinct machines the jobs' metrics.json ``hardware`` entries name (device name and precision)."""
    seen: list[str] = []
    for r in runs:
        hw = r.metrics.get("hardware") or {}
        if not hw:
            continue
        text = f"{hw.get('device_name') or hw.get('device') or 'unknown device'} ({hw.get('device', '?')}), precision {hw.get('precision', '?')}"
        if text not in seen:
            seen.append(text)
    return seen


def collect(runs: list[Run], recorded: dict | None) -> dict:
    """The provenance a report records: what was recorded before (``recorded``: given by hand, or by an earlier report
    of the same sweep), with the machine the jobs' metrics.json name where they name one."""
    out = dict(recorded or {})
    found = machines(runs)
    if found:
        out["machine"] = "; ".join(found)
    return out


def commands(runs: list[Run]) -> list[str]:
    """One ``python train.py -m`` line per distinct setting of the jobs (their overrides without the seed), in the
    order the jobs are listed, with the seeds of that setting joined."""
    by_setting: dict[tuple, list[str]] = {}
    for r in runs:
        if not r.overrides:
            continue
        setting = tuple((k, v) for k, v in r.overrides.items() if k != REPLICATE_KEY)
        seeds = by_setting.setdefault(setting, [])
        seed = r.overrides.get(REPLICATE_KEY)
        if seed is not None and seed not in seeds:
            seeds.append(seed)
    lines = []
    for setting, seeds in by_setting.items():
        ordered = sorted(seeds, key=lambda s: (0, int(s)) if s.lstrip("-").isdigit() else (1, s))
        parts = [f"{k}={_quote(v)}" for k, v in setting] + ([f"{REPLICATE_KEY}={','.join(ordered)}"] if ordered else [])
        lines.append("python train.py -m " + " ".join(parts))
    return lines


def _quote(v: str) -> str:
    return f"'{v}'" if any(c in v for c in "[]{}(),= ") and not (v.startswith("'") or v.startswith('"')) else v


def differing_settings(ctx: Context) -> tuple[list[str], list[list[str]]]:
    """(keys, rows): the settings of ``SETTING_KEYS`` that differ between jobs, one row per summary row."""
    runs = [r for r in ctx.sweep.runs if r.config]
    keys = [k for k in SETTING_KEYS if len({json.dumps(dig(r.config, k, NOT_RECORDED), default=str) for r in runs}) > 1]
    if not keys:
        return [], []
    rows = []
    factors = ctx.sweep.factors
    for key, group in ctx.group_runs().items():
        cells = []
        for k in keys:
            values = sorted({setting_text(dig(r.config, k, NOT_RECORDED)) for r in group if r.config})
            cells.append(", ".join(values) or "–")
        rows.append([", ".join(f"{f}={v}" for f, v in zip(factors, key)) or "all runs", *cells])
    return keys, rows


def settings_record(ctx: Context) -> dict:
    """``{row label: {key: value}}`` of every setting that differs between jobs (report.json)."""
    keys, rows = differing_settings(ctx)
    return {row[0]: dict(zip(keys, row[1:])) for row in rows}


def provenance_section(ctx: Context) -> Section:
    """Commands per distinct job setting, the settings that differ between rows, the machine and the versions."""
    prov = ctx.options.get(PROVENANCE) or {}
    lines: list[str] = []
    study = prov.get("study_commands") or []
    if study:
        lines += ["Study commands (recorded with the report):", "", "```bash", *study, "```", ""]
    cmds = commands(ctx.sweep.runs)
    if cmds:
        lines += ["Training commands, one per distinct job setting (rebuilt from each job's overrides, seeds joined):", "",
                  "```bash", *cmds, "```", ""]
    launches = ctx.sweep.commands or ([ctx.sweep.command] if ctx.sweep.command else [])
    if launches and (len(cmds) > 1 or len(launches) > 1):
        lines += [f"Sweep commands ({len(launches)} launches into this directory, oldest first; multirun.yaml and launches/):", "",
                  *(f"{i}. `{c}`" for i, c in enumerate(launches, 1)), ""]
    keys, rows = differing_settings(ctx)
    if keys:
        lines += [f"Settings that differ between jobs ({settings_source(c for row in rows for c in row[1:])}):", "",
                  *md_table([", ".join(ctx.sweep.factors) or "row", *keys], rows), ""]
    machine = prov.get("machine")
    lines += [f"Machine: {machine}." if machine else "Machine: not recorded by these jobs.", ""]
    versions = prov.get("versions") or {}
    if versions:
        where = prov.get("versions_from") or "the environment that wrote the report from the job directories"
        lines.append("Versions (" + where + "): " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    else:
        lines.append("Versions: not recorded.")
    for note in prov.get("notes") or []:
        lines += ["", note]
    return Section("What ran", lines)
