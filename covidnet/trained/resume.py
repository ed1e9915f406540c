"""Resuming a run: what a resume (``ckpt_path=last`` or a checkpoint file) checks before any work.

A resume must continue the run it resumes, not silently mix two: the
checkpoint's model and data-module hyperparameters and, when the run directory has one, the original config
record (``.hydra/config.yaml``, kept through resumes: covidnet.rundirs.hydra_resolvers) are compared with the config now;
any difference is refused, naming each key with both values.
``resume_allow=[trainer.max_epochs]`` accepts named changes (and keys interpolated from them, e.g.
``model.scheduler.T_max``); they are logged and written to ``<resume record>/accepted_changes.yaml`` and to
``metrics.json`` (``resumed_with_changes``). A run that already finished (``metrics.json`` written) is not
trained or tested again by a resume without changes: its results, ``fit_seconds`` included, stay as they are.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from covidnet.trained.checkpoint import read_checkpoint
from covidnet.core.errors import ConfigError
from covidnet.models.inits import saved_config
from covidnet.core.options import interpolated_key
from covidnet.rundirs.run_files import CHECKPOINT_DIR, HYDRA_DIR, LAST_CHECKPOINT, METRICS_FILE, read_metrics

log = logging.getLogger(__name__)
RECORD = HYDRA_DIR  # the run's config record (.hydra/config.yaml: how it started)

# Compared between a run and its resume: what decides the result. Not compared: where things are written,
# how many loader workers read the data, whether it may be downloaded, progress bars and logging.
COMPARED = ("seed", "test", "data", "model", "trainer")
NOT_COMPARED = (
    "data.num_workers", "data.pin_memory", "data.download",
    "trainer.accelerator", "trainer.default_root_dir", "trainer.plugins", "trainer.enable_progress_bar",
    "trainer.enable_model_summary", "trainer.num_sanity_val_steps", "trainer.log_every_n_steps",
)
_UNRESOLVED = object()


@dataclass
class Resume:
    """What ``check_resume`` found: the checkpoint to resume from (None: nothing was saved yet, Lightning
    starts over), its weights, the accepted changes, and the metrics of a run that already finished."""

    checkpoint: Path | None = None
    state_dict: dict | None = None
    accepted: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    finished: dict | None = None


def _flatten(node, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(node, DictConfig):
        for key in node.keys():
            name = f"{prefix}{key}"
            if OmegaConf.is_missing(node, key):
                out[name] = _UNRESOLVED
                continue
            try:
                child = node[key]
            except Exception:  # noqa: BLE001 - an interpolation this process cannot resolve: not compared
                out[name] = _UNRESOLVED
                continue
            if isinstance(child, DictConfig):
                out.update(_flatten(child, f"{name}."))
            elif isinstance(child, ListConfig):
                try:
                    out[name] = OmegaConf.to_container(child, resolve=True)
                except Exception:  # noqa: BLE001
                    out[name] = _UNRESOLVED
            else:
                out[name] = child
    return out


def _comparable(cfg: DictConfig) -> dict[str, Any]:
    flat = {}
    for top in COMPARED:
        if top in cfg:
            flat.update(_flatten(cfg[top], f"{top}.") if isinstance(cfg[top], DictConfig) else {top: cfg[top]})
    flat = {k: v for k, v in flat.items() if not k.startswith(NOT_COMPARED) and v is not _UNRESOLVED}
    if "data.root" in flat and isinstance(flat["data.root"], str):
        flat["data.root"] = _resolved(flat["data.root"])
    return flat


def _resolved(root: str) -> str:
    return str(Path(os.path.expanduser(root)).resolve())


def _show(value) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)


def resume_checkpoint_path(cfg: DictConfig, out: Path) -> Path | None:
    """The file ``ckpt_path`` names: ``last`` is ``<checkpoint dir>/last.ckpt`` (None when nothing was saved yet)."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        dirpath = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None) or out / CHECKPOINT_DIR
        last = Path(str(dirpath)) / LAST_CHECKPOINT
        return last if last.exists() else None
    return Path(str(ckpt_path)).expanduser()


def differences(cfg: DictConfig, ckpt: dict, original: DictConfig | None) -> dict[str, tuple[Any, Any]]:
    """``key -> (value in the run, value now)`` for every compared key that differs."""
    now = _comparable(cfg)
    found: dict[str, tuple[Any, Any]] = {}
    if original is not None:
        then = _comparable(original)
        found.update({k: (then[k], now[k]) for k in then.keys() & now.keys() if then[k] != now[k]})
    # the checkpoint's own hyperparameters: authoritative, also for a checkpoint from another directory
    for group, stored in (("model", ckpt.get("hyper_parameters") or {}), ("data", ckpt.get("datamodule_hyper_parameters") or {})):
        for key, value in stored.items():
            name = f"{group}.{key}"
            if name in now and not name.startswith(NOT_COMPARED):
                value = _resolved(value) if name == "data.root" and isinstance(value, str) else value
                if value != now[name]:
                    found[name] = (value, now[name])
                else:
                    found.pop(name, None)
    return dict(sorted(found.items()))


def check_resume(cfg: DictConfig, out: Path, record_dir: Path | None = None) -> Resume | None:
    """Check a resume before any work: the checkpoint (the one check of covidnet.trained.checkpoint) and the settings.

    ``record_dir`` is this process's Hydra record (``.hydra/resume-<time>`` on a resume), where accepted
    changes are written. Returns None when ``ckpt_path`` is not set.
    """
    if cfg.get("ckpt_path") is None:
        return None
    path = resume_checkpoint_path(cfg, out)
    # ckpt_path=last with nothing saved yet: Lightning warns and trains from the start, but the run's original config
    # is still the one to continue (two settings in one run directory describe neither)
    ckpt = read_checkpoint(path, option="ckpt_path") if path is not None else {}
    record = out / RECORD / "config.yaml"
    original = saved_config(record) if record.is_file() else None  # as its job resolved it (earlier runs' ${covidnet.init:...} too)
    found = differences(cfg, ckpt, original)
    allow = set(OmegaConf.to_container(cfg.resume_allow) if isinstance(cfg.get("resume_allow"), ListConfig) else cfg.get("resume_allow") or [])
    allowed = {}
    for key in found:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if key in allow or (isinstance(node, DictConfig) and interpolated_key(node, leaf) in allow):
            allowed[key] = found[key]
    refused = {k: v for k, v in found.items() if k not in allowed}
    # a key written ``${other}`` follows ``other``: when that differs too, it alone is named (allowing it allows both)
    for key in list(refused):
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig) and interpolated_key(node, leaf) in refused:
            del refused[key]
    if refused:
        lines = "\n  ".join(f"{k}: {_show(a)} in the run, {_show(b)} now" for k, a, b in ((k, *v) for k, v in refused.items()))
        source = f"from {path}" if path is not None else "(before its first checkpoint)"
        raise ConfigError(
            f"Refusing to resume {out} {source} with other settings than the run's (training would switch "
            f"part-way and the results describe neither):\n  {lines}\n"
            f"Resume with the run's settings (its overrides: {out / RECORD / 'overrides.yaml'}), or accept a change "
            f"with resume_allow=[{','.join(refused)}] (recorded in the run directory)."
        )
    resume = Resume(path, ckpt.get("state_dict"), allowed)
    if allowed:
        log.warning("Resuming with accepted changes: " + "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in allowed.items()))
        if record_dir is not None and record_dir.resolve() != (out / RECORD).resolve():
            record_dir.mkdir(parents=True, exist_ok=True)
            (record_dir / "accepted_changes.yaml").write_text(
                OmegaConf.to_yaml(accepted_record(allowed)))
    done = read_metrics(out / METRICS_FILE) if path is not None else None
    if done is not None:
        # finished with exactly these settings (and accepted changes) and epochs: nothing left to train or test
        same = json.loads(json.dumps(done.get("resumed_with_changes") or {})) == json.loads(json.dumps(accepted_record(allowed)))
        epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
        if same and isinstance(epochs, int) and (done.get("epochs_trained") or 0) >= epochs:
            resume.finished = done
    return resume


def accepted_record(accepted: dict[str, tuple[Any, Any]]) -> dict:
    """How metrics.json records accepted changes: ``{key: {"run": value, "now": value}}``."""
    return {k: {"run": a, "now": b} for k, (a, b) in accepted.items()}
