"""The option-rule engine: what a config key allows, and one check that reports every bad value at once.

Each module that owns a setting declares its rules next to its list of allowed values, as a module-level
``OPTIONS: dict[str, Rule]`` keyed by the full config path (``"data.fraction"``, ``"model.freeze"``), and its
constructors validate with the same :class:`Rule` objects (``rule.check(key, value)``), so every allowed-value
list and every bound is written once. An entry point joins the ``OPTIONS`` of the modules it uses into its
table (``covidnet/apps/train.py`` ``TRAIN``, ``visualize.py`` ``VISUALIZE``, ``evaluate.py`` ``EVALUATE``) and calls
``check_config(cfg, table)`` first, before any image is decoded or any model is built::

    Invalid option (nothing was started):
      data.batch_size=1: must be an integer >= 2 (BatchNorm needs two images per training batch)

A rule over several keys is an :class:`Across` entry of the same table (e.g. ``model.freeze`` must be a mode of
``model.arch``); it is asked only when each of its keys is present and passed its own rule.

A key the config does not have is a problem like a bad value (``data.fraction is not in the config ...``): a
misspelt rule would otherwise never be asked, and a key deleted on the command line (``~data.fraction``) would fail
later in a constructor. The one exception is a key of an optional group that is switched off (``data.source_aug``
null, ``callbacks.cam`` null or ``callbacks=none``): such rules are declared with :func:`in_group`.
tests/test_config_check.py walks every ``OPTIONS`` table against the composed configs (each experiment too), so a
rule whose key no config has fails there first. A key the table does not name is not checked here at all: Hydra
already refuses misspelt overrides (``Could not override ...``).

Where each option is written: its default in conf/ (the YAML Hydra composes, shows with ``--cfg job`` and overrides),
what it allows in one ``OPTIONS`` rule, and a constructor default only where a checkpoint from before the option
existed must still load (it says what such a checkpoint meant).
Rules are plain predicates on the resolved value; a value Hydra parsed as another type (``abc`` for an
integer, ``1.5`` for an integer, ``yes`` for a boolean) fails the rule's type test.

This module is the bottom of the config layer: it imports nothing of covidnet, and omegaconf only inside the
functions that read a config, because the owners (the data module, the model) import it where the config
stack is absent (benchmarks/throughput.py on a GPU box without Hydra).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

UINT32_MAX = 2**32 - 1

Choices = Iterable[str] | Callable[[], Iterable[str]]


def _names_of(choices: Choices) -> list[str]:
    return list(choices() if callable(choices) else choices)


@dataclass(frozen=True)
class Rule:
    """What a key allows: ``ok(value)`` and the words that say it (``must be <allows>``).

    ``allows`` may be a callable for choices known only when checked (the eval sets in conf/eval/).
    ``choices`` (one_of) and ``bounds`` (integer, number) let a constructor say the same thing in its own words:
    ``Unknown data.field='x'; choose one of ...`` or ``data.fraction=0 must be in (0, 1]``. ``group`` (set by
    :func:`in_group`): the optional config group the key lies in; null or absent, the rule is not asked."""

    allows: str | Callable[[], str]
    ok: Callable[[Any], bool]
    why: str = ""
    choices: Choices | None = None
    bounds: str = ""
    group: str = ""

    def because(self, why: str) -> Rule:
        return replace(self, why=why)

    def describe(self) -> str:
        return self.allows() if callable(self.allows) else self.allows

    def refusal(self, key: str, value: Any) -> str:
        """A constructor's message for a value this rule refuses (it names the key, the value and what is allowed)."""
        why = f" ({self.why})" if self.why else ""
        if self.choices is not None:
            return f"Unknown {key}={value!r}; choose one of {', '.join(_names_of(self.choices))}.{why}"
        return f"{key}={show(value)} must be {self.bounds or self.describe()}{why}."

    def check(self, key: str, value: Any, error: type[Exception] = ValueError) -> Any:
        """``value`` if this rule allows it; else ``error`` naming ``key`` (a constructor's own check)."""
        if not self.ok(value):
            raise error(self.refusal(key, value))
        return value


@dataclass(frozen=True)
class Across:
    """A rule over several keys: ``problems(values)`` gets ``{key: resolved value}`` of ``keys`` and returns
    one line per problem (``key=value: must be ...``), empty when they fit together."""

    keys: tuple[str, ...]
    problems: Callable[[dict[str, Any]], list[str]]


Table = dict[str, "Rule | Across"]


def in_group(group: str, rules: dict[str, Rule]) -> dict[str, Rule]:
    """``rules`` for keys of an optional config group (``data.source_aug``): asked when the group is in the config,
    not when it is switched off (null, or absent like ``callbacks.cam`` under ``callbacks=none``)."""
    outside = [key for key in rules if not key.startswith(f"{group}.")]
    if outside:
        raise ValueError(f"in_group({group!r}): {outside} are not keys of that group")
    return {key: replace(rule, group=group) for key, rule in rules.items()}


def is_integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
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
    bounds = _bounds(lo, hi, False, False)
    return Rule(f"an integer {bounds}".rstrip(), lambda v: is_integer(v) and _within(v, lo, hi, False, False), bounds=bounds)


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Rule:
    bounds = _bounds(lo, hi, lo_open, hi_open)
    return Rule(f"a number {bounds}".rstrip(), lambda v: is_number(v) and _within(v, lo, hi, lo_open, hi_open), bounds=bounds)


def boolean() -> Rule:
    return Rule("true or false", lambda v: isinstance(v, bool))


def text() -> Rule:
    return Rule("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")


def optional(rule: Rule) -> Rule:
    return Rule(lambda: f"{rule.describe()} or null", lambda v: v is None or rule.ok(v), rule.why, bounds=rule.bounds)


def one_of(choices: Choices) -> Rule:
    return Rule(lambda: "one of " + ", ".join(_names_of(choices)), lambda v: isinstance(v, str) and v in _names_of(choices),
                choices=choices)


def items(v) -> list | None:
    """A list value as a list (a single name counts as a list of one; a ListConfig is a Sequence), else None."""
    if isinstance(v, str):
        return [v]
    return list(v) if isinstance(v, Sequence) else None


def list_of(choices: Choices) -> Rule:
    """A non-empty list whose items are among ``choices`` (a single name is taken as a list of one)."""

    def ok(v) -> bool:
        found = items(v)
        return bool(found) and all(isinstance(i, str) and i in _names_of(choices) for i in found)

    return Rule(lambda: "a non-empty list of " + ", ".join(_names_of(choices)), ok)


def names(v) -> list[str] | None:
    """A list of non-empty names (a single name counts as a list of one), else None."""
    found = items(v)
    return found if found and all(isinstance(i, str) and i.strip() for i in found) else None


SEED = integer(0, UINT32_MAX)


def show(value) -> str:
    """A value as a user would write it on the command line (``null``, ``true``, quotes only where needed)."""
    if type(value).__module__.startswith("omegaconf"):  # a DictConfig or ListConfig (omegaconf: see the module docstring)
        from omegaconf import OmegaConf

        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, str):
        return repr(value) if value.strip() != value or value == "" or not value.isprintable() else value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def interpolated_key(node, leaf: str) -> str | None:
    """``seed`` for a value written ``${seed}``; None for anything else."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(node, resolve=False).get(leaf) if OmegaConf.is_interpolation(node, leaf) else None
    return raw[2:-1] if isinstance(raw, str) and raw.startswith("${") and raw.endswith("}") and ":" not in raw else None


def _has(cfg, key: str) -> bool:
    from omegaconf import DictConfig, OmegaConf

    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node.keys()  # (`in node` is False for ???)


def _switched_off(cfg, rule: Rule | None) -> bool:
    from omegaconf import OmegaConf

    return rule is not None and rule.group != "" and OmegaConf.select(cfg, rule.group, default=None) is None


def unknown_keys(cfg, table: Table) -> list[str]:
    """Keys ``table`` names (its rules' and its rules across keys') that ``cfg`` does not have, except keys of a
    group switched off in ``cfg``: a rule for such a key would never be asked."""
    found: list[str] = []
    for key, rule in table.items():
        for k in rule.keys if isinstance(rule, Across) else (key,):
            own = table.get(k)
            if k not in found and not _has(cfg, k) and not _switched_off(cfg, own if isinstance(own, Rule) else None):
                found.append(k)
    return found


def problems(cfg, table: Table) -> list[str]:
    """One line per bad value (empty when all is well): every key the config lacks, every key's own rule, then the
    rules across keys."""
    from omegaconf import ListConfig, OmegaConf

    found: list[str] = []
    values: dict[str, Any] = {}  # keys present whose value passed its own rule (what an Across rule may read)

    absent = unknown_keys(cfg, table)
    for key in absent:
        own = table.get(key)
        allows = f": it must be {own.describe()}" if isinstance(own, Rule) else ""
        found.append(f"{key} is not in the config (a misspelt rule, or a key deleted from the config){allows}")
    for key, rule in table.items():
        if isinstance(rule, Across):
            found.extend(f"{key}: {k} has no rule of its own in this table, so this rule would never be asked"
                         for k in rule.keys if not isinstance(table.get(k), Rule))
            continue
        if key in absent or not _has(cfg, key):
            continue  # named above, or a key of a group switched off
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
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
        if rule.ok(value):
            values[key] = value
            continue
        target = interpolated_key(node, leaf)
        if target in table and any(line.startswith(f"{target}=") for line in found):
            continue  # data.seed=${seed}: the bad value is reported once, under the key that was set
        why = f" ({rule.why})" if rule.why else ""
        found.append(f"{key}={show(value)}: must be {rule.describe()}{why}")
    for rule in table.values():
        if isinstance(rule, Across) and all(k in values for k in rule.keys):
            found.extend(rule.problems({k: values[k] for k in rule.keys}))
    return found


def check_config(cfg, table: Table, error: type[Exception]) -> None:
    """Raise one ``error`` (the apps pass ``covidnet.core.errors.ConfigError``, which this module cannot import) naming
    every key whose value its rule does not allow."""
    found = problems(cfg, table)
    if found:
        what = "Invalid option" if len(found) == 1 else f"{len(found)} invalid options"
        raise error(f"{what} (nothing was started):\n  " + "\n  ".join(found))
