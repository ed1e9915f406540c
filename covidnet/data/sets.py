"""The named image sets: ``conf/eval/<name>.yaml``, read into an :class:`EvalSet` (see docs/external.md).

A set is named once and used three ways: evaluated on (``evaluate.py eval=[<name>]``), evaluated on after
training (``eval_sets=[<name>]``), and trained on as a second source (``data.sources=[covid_ct,<name>]``,
covidnet.data.datamodule). All three read the definition here, so a set means the same folder and read options everywhere.

The catalogue is found through :func:`covidnet.core.configs.config_dir`, the one place that knows where the configs
are in a source checkout and in an installed package (a path computed from this file's location is wrong in a
wheel, where ``conf/`` lies inside the package). The statistics of a scored set are in covidnet.metrics.set_metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from covidnet.core.configs import config_dir
from covidnet.core.errors import EvalError
from covidnet.data.multisource import MAIN_SOURCE, split_by_patient
from covidnet.core.options import Rule, text
from covidnet.images.sources import Record, SourceError, read_source

if TYPE_CHECKING:
    from omegaconf import DictConfig

SETS_FOLDER = "eval"  # conf/eval/<name>.yaml


@dataclass
class EvalSet:
    name: str
    kind: str
    root: Path
    records: list[Record]
    notes: list[str]
    topk: int
    # the resolved set definition (kind, root, read options, patient_topk): what was evaluated, in metrics.json
    definition: dict = field(default_factory=dict)


def known_sets() -> list[str]:
    """Names of the sets in conf/eval/."""
    return sorted(p.stem for p in (config_dir() / SETS_FOLDER).glob("*.yaml"))


def _set_list(v) -> bool:
    names = [i.strip() for i in v.split(",") if i.strip()] if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else None
    return names is not None and all(isinstance(i, str) and i in known_sets() for i in names)


# the set catalogue's keys of train.py and evaluate.py (covidnet.core.options)
SET_OPTIONS: dict[str, Rule] = {
    "eval_sets": Rule(lambda: "a list of eval sets among " + ", ".join(known_sets()) + " (conf/eval/), or []", _set_list),
    "eval_data": text(),
}


def set_names(value) -> list[str]:
    """``eval=``/``eval_sets=`` as typed (a list, or one comma-separated string) -> set names."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def set_config(name: str, eval_data: str | None = None, overrides: dict | None = None) -> DictConfig:
    """``conf/eval/<name>.yaml`` on its own (for training's ``eval_sets``), with ``${eval_data}`` resolved."""
    path = config_dir() / SETS_FOLDER / f"{name}.yaml"
    if not path.is_file():
        raise EvalError(f"Unknown eval set {name!r}: no {path}. Known sets: {', '.join(known_sets())}.")
    from omegaconf import OmegaConf  # here, not at the top: the data module imports this module where no config is read

    base = OmegaConf.create({"eval_data": eval_data if eval_data is not None else "${oc.env:COVIDNET_EVAL_DATA,data}"})
    merged = OmegaConf.merge(base, {"set": OmegaConf.load(path)}, {"set": overrides or {}})
    return OmegaConf.create(OmegaConf.to_container(merged, resolve=True)["set"])


def named(text: str, name: str) -> str:
    """A reader's message with ``<set>`` (in a setting it suggests, e.g. ``++eval.<set>.read.extensions=...``) replaced
    by the set's name, so the suggestion can be pasted as it is: readers do not know the name they are read under."""
    return text.replace("eval.<set>.", f"eval.{name}.")


def load_set(name: str, cfg: DictConfig | dict) -> EvalSet:
    """The set ``cfg`` defines (kind, root, read options, patient_topk), read by covidnet.images.sources; every key it
    leaves unset is named at once, with the override that sets it."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    unset = sorted(k.removeprefix(f"eval.{name}.") for k in OmegaConf.missing_keys(cfg))  # keys below the set
    if unset:
        raise EvalError(f"eval set {name}: not set: {', '.join(unset)}. Pass " + " ".join(f"eval.{name}.{k}=..." for k in unset)
                        + f" (conf/eval/{name}.yaml says what each means).")
    for key in ("kind", "root"):
        if key not in cfg:
            raise EvalError(f"eval set {name}: no {key} in its config (conf/eval/{name}.yaml).")
    options = OmegaConf.to_container(cfg.read, resolve=True) if cfg.get("read") is not None else {}
    root = Path(str(cfg.root)).expanduser()
    try:
        records, notes = read_source(str(cfg.kind), root, **options)
    except SourceError as err:
        raise EvalError(f"eval set {name}: {named(str(err), name)}") from err
    notes = [named(n, name) for n in notes]
    topk = int(cfg.get("patient_topk", 5))
    if topk < 1:
        raise EvalError(f"eval set {name}: patient_topk={topk} must be at least 1.")
    definition = {"kind": str(cfg.kind), "root": str(root.resolve()), "read": options, "patient_topk": topk}
    return EvalSet(name, str(cfg.kind), root.resolve(), records, notes, topk, definition)


# --- what a checkpoint was trained on ------------------------------------------------------------------------
def source_root(name: str, dm_hparams: dict) -> Path | None:
    """Where a training source of a checkpoint was read from (its inline definition or conf/eval/<name>.yaml under
    the run's ``sets_root``), resolved here; None where that cannot be told."""
    defs = (dm_hparams.get("source_defs") or {}).get(name)
    try:
        root = defs.get("root") if defs is not None else set_config(name, dm_hparams.get("sets_root")).root
    except (EvalError, AttributeError, ValueError):
        return None
    return Path(str(root)).expanduser().resolve() if root else None


def held_out(s: EvalSet, dm_hparams: dict) -> tuple[list[int], dict | None]:
    """Indices of the records of ``s`` the checkpoint was not trained on, and what was left out (None: nothing).

    A model trained with ``data.sources=[covid_ct, <set>]`` saw the patients of the other folds of that set
    (covidnet.data.multisource.split_by_patient): counting them as external would score it on its own training data.
    The set is recognised by its name or by the folder it is read from; its held-out fold is what is scored."""
    everything = list(range(len(s.records)))
    for name in dm_hparams.get("sources") or []:
        if name == MAIN_SOURCE or not (name == s.name or source_root(name, dm_hparams) == s.root):
            continue
        fold, n_folds = int(dm_hparams.get("fold", 0)), int(dm_hparams.get("n_folds", 2))
        try:
            parts = split_by_patient(s.records, fold, n_folds, f"eval set {s.name}")
        except SourceError as err:
            raise EvalError(f"eval set {s.name} is the training source {name!r} of this checkpoint, and its training patients "
                            f"cannot be told apart ({err}); evaluate on a set the model was not trained on.") from err
        test = {id(r) for r in parts["test"]}
        keep = [i for i, r in enumerate(s.records) if id(r) in test]
        trained = sorted({r.patient for r in parts["train"]})
        return keep, {"source": name, "fold": fold, "n_folds": n_folds, "patients": trained, "n_images": len(s.records) - len(keep)}
    return everything, None
