"""Every option checked before any work: one table per entry point of ``key -> rule``.

``check_config(cfg, TRAIN)`` runs first in ``train(cfg)`` (and ``VISUALIZE`` in ``visualize(cfg)``), before
any image is decoded or any model is built, and reports every bad value at once, each with its key, its
value and what is allowed::

    Invalid option (nothing was started):
      data.batch_size=1: must be an integer >= 2 (BatchNorm needs two images per training batch)

**Adding a key** is one line in the table of its entry point, e.g.
``"data.field": one_of(("whole", "lungs")),`` or ``"data.mix": number(0, 1),``; choices that live in
another module are given lazily (``one_of(lambda: ...)``) so this module imports nothing heavy. A key the
config does not have is skipped (a table may name keys of optional groups), and a key the table does not
name is not checked here at all: Hydra already refuses misspelt overrides (``Could not override ...``).
Rules are plain predicates on the resolved value; a value Hydra parsed as another type (``abc`` for an
integer, ``1.5`` for an integer, ``yes`` for a boolean) fails the rule's type test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from covidnet.errors import ConfigError

UINT32_MAX = 2**32 - 1


@dataclass(frozen=True)
class Rule:
    """What a key allows: ``ok(value)`` and the words that say it (``must be <allows>``).

    ``allows`` may be a callable for choices known only when checked (``one_of(lambda: ...)``)."""

    allows: str | Callable[[], str]
    ok: Callable[[Any], bool]
    why: str = ""

    def because(self, why: str) -> Rule:
        return Rule(self.allows, self.ok, why)

    def describe(self) -> str:
        return self.allows() if callable(self.allows) else self.allows


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bounds(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        return f"in {left}{lo}, {hi}{right}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return ""


def _within(v, lo, hi, lo_open: bool, hi_open: bool) -> bool:
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    return not (hi is not None and (v >= hi if hi_open else v > hi))


def integer(lo: int | None = None, hi: int | None = None) -> Rule:
    return Rule(f"an integer {_bounds(lo, hi, False, False)}".rstrip(), lambda v: _is_int(v) and _within(v, lo, hi, False, False))


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Rule:
    return Rule(f"a number {_bounds(lo, hi, lo_open, hi_open)}".rstrip(), lambda v: _is_num(v) and _within(v, lo, hi, lo_open, hi_open))


def boolean() -> Rule:
    return Rule("true or false", lambda v: isinstance(v, bool))


def text() -> Rule:
    return Rule("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")


def optional(rule: Rule) -> Rule:
    return Rule(lambda: f"{rule.describe()} or null", lambda v: v is None or rule.ok(v), rule.why)


def _choices(choices: Iterable[str] | Callable[[], Iterable[str]]) -> list[str]:
    return list(choices() if callable(choices) else choices)


def one_of(choices: Iterable[str] | Callable[[], Iterable[str]]) -> Rule:
    return Rule(lambda: "one of " + ", ".join(_choices(choices)), lambda v: isinstance(v, str) and v in _choices(choices))


def list_of(choices: Iterable[str] | Callable[[], Iterable[str]]) -> Rule:
    """A non-empty list whose items are among ``choices`` (a single name is taken as a list of one)."""

    def ok(v) -> bool:
        items = [v] if isinstance(v, str) else list(v) if isinstance(v, (list, tuple, ListConfig)) else None
        return bool(items) and all(isinstance(i, str) and i in _choices(choices) for i in items)

    return Rule(lambda: "a non-empty list of " + ", ".join(_choices(choices)), ok)


# --- choices that live with their implementation (imported only when checked) ----------------------------
def _archs():
    from covidnet.backbones import ARCHS

    return sorted(ARCHS)


INIT_RESOLVER = "covidnet.init"


def _init_default(name: str, field: str, arch: str | None = None):
    from covidnet.inits import config_default  # lazy: the config layer imports neither torch nor the model

    return config_default(name, field, arch)


def register_init_resolver() -> None:
    """Register ``${covidnet.init:<init>,<field>}`` (read by conf/model/*.yaml); idempotent."""
    if not OmegaConf.has_resolver(INIT_RESOLVER):
        OmegaConf.register_new_resolver(INIT_RESOLVER, _init_default)


register_init_resolver()


def _inits():
    from covidnet.inits import INITS

    return list(INITS)


def _freeze_modes():
    from covidnet.backbones import FREEZE_MODES

    return list(FREEZE_MODES)


def _normalizations():
    try:
        from covidnet.preprocess import NORMALIZATIONS
    except ImportError:
        from covidnet.data import NORMALIZATIONS
    return sorted(NORMALIZATIONS)


def _fields():
    from covidnet.preprocess import FIELDS

    return list(FIELDS)


def _intensities():
    from covidnet.preprocess import INTENSITIES

    return list(INTENSITIES)


def _splits():
    from covidnet.dataset import SPLITS

    return list(SPLITS)


def _precisions():
    from covidnet.hardware import PRECISIONS

    return list(PRECISIONS)


def _cam_methods():
    from covidnet.cam import METHODS

    return list(METHODS)


def _eval_set_names():
    from covidnet.sets import known_sets  # lazy: the config layer does not import the sets (they read the configs)

    return known_sets()


def eval_set_list() -> Rule:
    """A list (possibly empty) of set names from conf/eval/ (training's ``eval_sets``)."""
    def ok(v) -> bool:
        items = [i.strip() for i in v.split(",") if i.strip()] if isinstance(v, str) else list(v) if isinstance(v, (list, tuple, ListConfig)) else None
        return items is not None and all(isinstance(i, str) and i in _eval_set_names() for i in items)

    return Rule(lambda: "a list of eval sets among " + ", ".join(_eval_set_names()) + " (conf/eval/), or []", ok)


def _slice_policies():
    from covidnet.multisource import SLICE_POLICIES

    return list(SLICE_POLICIES)


def _balance_modes():
    from covidnet.multisource import BALANCE_MODES

    return list(BALANCE_MODES)


def _names(v) -> list[str] | None:
    """A list of non-empty names (a single name counts as a list of one), else None."""
    items = [v] if isinstance(v, str) else list(v) if isinstance(v, (list, tuple, ListConfig)) else None
    return items if items and all(isinstance(i, str) and i.strip() for i in items) else None


SEED = integer(0, UINT32_MAX)

# train.py (conf/train.yaml and its groups)
TRAIN: dict[str, Rule] = {
    "seed": SEED,
    "test": boolean(),
    "data.root": text(),
    "data.download": boolean(),
    "data.image_size": integer(32, 2048).because("the side in pixels; ResNet downsamples by 32"),
    "data.batch_size": integer(2).because("BatchNorm needs two images per training batch"),
    "data.num_workers": integer(0),
    "data.fraction": number(0, 1, lo_open=True).because("the share of the training split kept"),
    "data.normalization": one_of(_normalizations),
    "data.augment": boolean(),
    "data.crop_scale_min": number(0, 1, lo_open=True).because("the smallest crop's share of the image area"),
    "data.hflip": boolean(),
    "data.rotate_degrees": number(0, 180),
    "data.jitter": number(0, 1),
    "data.field": one_of(_fields),
    "data.intensity": one_of(_intensities),
    "data.crop_margin": number(0, 1).because("the share of the lung box's size added on each side"),
    "data.source_aug.p": number(0, 1),
    "data.source_aug.gamma": number(0, 3),
    "data.source_aug.window": number(0, 0.45),
    "data.source_aug.blur_sigma": number(0, 10),
    "data.source_aug.sharpen": number(0, 10),
    "data.source_aug.noise_std": number(0, 1),
    "data.source_aug.downup_min": Rule("0 (off) or a number in (0, 1)", lambda v: _is_num(v) and (v == 0 or 0 < v < 1)),
    "data.source_aug.jpeg_quality_min": Rule("0 (off) or an integer in [1, 95]", lambda v: _is_int(v) and (v == 0 or 1 <= v <= 95)),
    "data.seed": SEED,
    "data.pin_memory": optional(boolean()),
    "data.sources": Rule("a non-empty list of source names that includes covid_ct", lambda v: _names(v) is not None and "covid_ct" in _names(v)),
    "data.test_sources": optional(Rule("a non-empty list of source names", lambda v: bool(_names(v)))),
    "data.fold": integer(0).because("the patient fold tested (0 .. data.n_folds - 1)"),
    "data.n_folds": integer(2),
    "data.slice_labels": one_of(_slice_policies),
    "data.balance": one_of(_balance_modes),
    "data.sets_root": optional(text()),
    "data.device_augment": Rule("auto, true or false", lambda v: isinstance(v, bool) or v == "auto"),
    "model.arch": one_of(_archs),
    "model.init": one_of(_inits),
    "model.freeze": one_of(_freeze_modes),
    "model.weights_path": optional(text()),
    "model.backbone_lr_scale": number(0),
    "model.calibrate_bn": boolean().because("estimate frozen layers' BatchNorm statistics on the training images (docs/transfer.md)"),
    "model.optimizer.lr": number(0, lo_open=True),
    "model.optimizer.weight_decay": number(0),
    "trainer.max_epochs": integer(1).because("a run of 0 epochs trains nothing and has no result"),
    "trainer.check_val_every_n_epoch": optional(integer(1)),
    "trainer.log_every_n_steps": integer(1),
    "trainer.deterministic": Rule("true, false or warn", lambda v: isinstance(v, bool) or v == "warn"),
    "eval_sets": eval_set_list(),
    "eval_data": text(),
    # speed settings resolved for the machine by covidnet.hardware (auto) or forced
    "trainer.precision": Rule(lambda: "one of " + ", ".join(_precisions()), lambda v: str(v) in _precisions()),
    "channels_last": Rule("auto, true or false", lambda v: isinstance(v, bool) or v == "auto"),
    "threads": optional(integer(1)).because("torch intra-op threads of this process"),
}

# visualize.py (conf/visualize.yaml)
VISUALIZE: dict[str, Rule] = {
    "ckpt": Rule("a .ckpt file, a run or sweep directory, or a list of these",
                 lambda v: (isinstance(v, str) and v.strip() != "") or (isinstance(v, list) and bool(v) and all(isinstance(i, str) for i in v))),
    "seed": SEED,
    "data.root": text(),
    "split": one_of(_splits),
    "n_per_class": integer(1),
    "methods": list_of(_cam_methods),
    "layer": one_of(("layer1", "layer2", "layer3", "layer4")),
    "target": one_of(("label", "prediction")),
    "score_images": one_of(("figure", "split")),
    "faithfulness_fraction": number(0, 1, lo_open=True, hi_open=True),
    "batch_size": integer(1),
    "device": Rule("cpu, cuda, cuda:<index> or auto", lambda v: isinstance(v, str) and (v in ("cpu", "cuda", "auto") or (v.startswith("cuda:") and v[5:].isdigit()))),
    "tensorboard": boolean(),
    "include_unfinished": boolean(),
}


# evaluate.py (conf/evaluate.yaml); each set's own keys are checked by covidnet.sets.load_set
EVALUATE: dict[str, Rule] = {
    "ckpt": VISUALIZE["ckpt"],
    "eval_data": text(),
    "data.image_size": optional(integer(32, 2048)),
    "data.normalization": optional(one_of(_normalizations)),
    "data.field": optional(one_of(_fields)),
    "data.intensity": optional(one_of(_intensities)),
    "data.crop_margin": optional(number(0, 1)),
    "precision": Rule(lambda: "run (the training run's) or one of 32-true, bf16-mixed, 16-mixed, bf16-true, 16-true, 64-true",
                      lambda v: str(v) in ("run", "32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16", "bf16-true", "16-true", "64-true", "64")),
    "channels_last": Rule("run (the training run's), true or false", lambda v: isinstance(v, bool) or v == "run"),
    "into_runs": boolean(),
    "batch_size": integer(1),
    "device": VISUALIZE["device"],
    "n_boot": integer(100).because("fewer resamples make the 2.5 % and 97.5 % percentiles meaningless"),
    "seed": SEED,
    "progress": boolean(),
}


def _show(value) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, str):
        return repr(value) if value.strip() != value or value == "" or not value.isprintable() else value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def interpolated_key(node: DictConfig, leaf: str) -> str | None:
    """``seed`` for a value written ``${seed}``; None for anything else."""
    raw = OmegaConf.to_container(node, resolve=False).get(leaf) if OmegaConf.is_interpolation(node, leaf) else None
    return raw[2:-1] if isinstance(raw, str) and raw.startswith("${") and raw.endswith("}") and ":" not in raw else None


def problems(cfg: DictConfig, table: dict[str, Rule]) -> list[str]:
    """One line per bad value (empty when all is well)."""
    found = []
    for key, rule in table.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
        if not isinstance(node, DictConfig) or leaf not in node.keys():  # (`in node` is False for ???)
            continue  # this config has no such key (an optional group, or an older config)
        if OmegaConf.is_missing(node, leaf):
            found.append(f"{key} is not set: it must be {rule.describe()}")
            continue
        try:
            value = node[leaf]
        except Exception as err:  # noqa: BLE001 - a broken interpolation: name it like any other bad value
            found.append(f"{key}: cannot be resolved ({type(err).__name__}: {str(err).splitlines()[0]})")
            continue
        if isinstance(value, ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        if not rule.ok(value):
            target = interpolated_key(node, leaf)
            if target in table and any(line.startswith(f"{target}=") for line in found):
                continue  # data.seed=${seed}: the bad value is reported once, under the key that was set
            why = f" ({rule.why})" if rule.why else ""
            found.append(f"{key}={_show(value)}: must be {rule.describe()}{why}")
    return found


def check_config(cfg: DictConfig, table: dict[str, Rule]) -> None:
    """Raise one ``ConfigError`` naming every key whose value its rule does not allow."""
    found = problems(cfg, table)
    if found:
        what = "Invalid option" if len(found) == 1 else f"{len(found)} invalid options"
        raise ConfigError(f"{what} (nothing was started):\n  " + "\n  ".join(found))
