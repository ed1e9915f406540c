"""Every option is checked before any work, and an expected error is one message without a traceback."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from covidnet.apps.cli import EXIT_USER_ERROR
from covidnet.core.errors import ConfigError
from covidnet.apps.evaluate import EVALUATE
from covidnet.core.options import Across, Rule, in_group, integer, problems, unknown_keys
from covidnet.core.options import check_config as check_table
from covidnet.apps.train import TRAIN, train
from covidnet.trained.visualization import VISUALIZE

ROOT = Path(__file__).resolve().parents[1]


def compose_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=overrides)


def check_config(cfg, table) -> None:
    check_table(cfg, table, ConfigError)  # what the entry points do


def run_entry(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("overrides", [[], ["experiment=smoke"], ["experiment=cpu128"], ["init=imagenet"], ["init=ct"]])
def test_shipped_configs_pass_the_check(overrides):
    assert problems(compose_cfg("train", overrides), TRAIN) == []


# --- every rule names a key the config has -------------------------------------------------------------
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
# each app's table against its composed config: the defaults, each experiment, each optional group on and off
APP_CONFIGS = (
    [("train", TRAIN, []), ("train", TRAIN, ["data/source_aug=default"]), ("train", TRAIN, ["callbacks=none"])]
    + [("train", TRAIN, [f"experiment={e}"]) for e in EXPERIMENTS]
    + [("visualize", VISUALIZE, ["ckpt=a.ckpt"]), ("evaluate", EVALUATE, ["ckpt=a.ckpt"])]
)


def options_tables() -> dict[str, dict]:
    """Every module-level ``*OPTIONS`` table of the package (found in the source, so a new module's table is walked
    too), by ``module.NAME``."""
    found = {}
    for path in sorted((ROOT / "covidnet").glob("**/*.py")):
        tree = ast.parse(path.read_text())
        targets = [t for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                   for t in (n.targets if isinstance(n, ast.Assign) else [n.target])]
        names = [t.id for t in targets if isinstance(t, ast.Name) and t.id.endswith("OPTIONS")]
        if names:
            module = importlib.import_module(".".join(("covidnet", *path.relative_to(ROOT / "covidnet").with_suffix("").parts)))
            found.update({f"{module.__name__}.{name}": getattr(module, name) for name in names})
    return found


def keys_no_config_has(table: dict) -> list[str]:
    """Keys of ``table`` absent from every app's default config with its optional groups on (a rule's group does
    not excuse it here: a key of a group must exist where the group is on)."""
    strict = {k: replace(r, group="") if isinstance(r, Rule) else r for k, r in table.items()}
    cfgs = [compose_cfg("train", ["data/source_aug=default"]), compose_cfg("visualize", ["ckpt=a.ckpt"]), compose_cfg("evaluate", [])]
    return sorted(set.intersection(*(set(unknown_keys(cfg, strict)) for cfg in cfgs)))


@pytest.mark.parametrize(("app", "table", "overrides"), APP_CONFIGS, ids=[f"{a}{o}" for a, _, o in APP_CONFIGS])
def test_every_rule_of_an_app_names_a_key_of_its_composed_config(app, table, overrides):
    cfg = compose_cfg(app, overrides)
    assert unknown_keys(cfg, table) == []
    assert problems(cfg, table) == []  # and every rule across keys reads keys with rules of their own


def test_every_options_table_of_the_package_names_keys_a_config_has():
    tables = options_tables()
    assert len(tables) >= 12 and {"covidnet.models.model.OPTIONS", "covidnet.core.hardware.TRAINER_OPTIONS", "covidnet.data.sets.SET_OPTIONS"} <= set(tables)
    assert {name: keys_no_config_has(table) for name, table in tables.items() if keys_no_config_has(table)} == {}


def test_a_misspelt_rule_fails_the_walk_and_the_check():
    """A rule whose key the config lacks was silently skipped, so it never fired: now the walks above and the check
    itself name it."""
    cfg = compose_cfg("train", [])
    misspelt = {**TRAIN, "data.batchsize": integer(2)}
    assert unknown_keys(cfg, misspelt) == ["data.batchsize"]
    assert keys_no_config_has({"data.batchsize": integer(2), "data.batch_size": integer(2)}) == ["data.batchsize"]
    with pytest.raises(ConfigError) as err:
        check_config(cfg, misspelt)
    assert "data.batchsize is not in the config (a misspelt rule, or a key deleted from the config): it must be an integer >= 2" in str(err.value)
    # a key deleted on the command line is named before any work, not found out by a constructor
    assert problems(compose_cfg("train", ["~data.fraction"]), TRAIN) == [
        "data.fraction is not in the config (a misspelt rule, or a key deleted from the config): it must be a number in (0, 1]"]
    # in an optional group: named where the group is on, not asked where it is switched off
    in_cam = {**TRAIN, **in_group("callbacks.cam", {"callbacks.cam.kk": integer(1)})}
    assert unknown_keys(cfg, in_cam) == ["callbacks.cam.kk"]
    assert keys_no_config_has(in_group("callbacks.cam", {"callbacks.cam.kk": integer(1)})) == ["callbacks.cam.kk"]
    assert unknown_keys(compose_cfg("train", ["callbacks.cam=null"]), in_cam) == []
    assert unknown_keys(compose_cfg("train", ["callbacks=none"]), in_cam) == []
    with pytest.raises(ValueError, match="not keys of that group"):
        in_group("callbacks.cam", {"callbacks.came.k": integer(1)})
    # a rule across keys over a misspelt key, or over a key without a rule of its own, would never be asked either
    across = {**TRAIN, "x": Across(("trainer.max_epoch", "trainer.max_epochs"), lambda values: ["never asked"])}
    assert unknown_keys(cfg, across) == ["trainer.max_epoch"]
    assert "x: trainer.max_epoch has no rule of its own in this table, so this rule would never be asked" in problems(cfg, across)


def test_source_aug_group_sweeps_between_none_and_default():
    none, default = (compose_cfg("train", [f"data/source_aug={o}"]) for o in ("none", "default"))
    assert none.data.source_aug is None and compose_cfg("train", []).data.source_aug is None
    assert default.data.source_aug.p == 0.5 and problems(default, TRAIN) == []


def test_visualize_defaults_pass_the_check():
    assert problems(compose_cfg("visualize", ["ckpt=a.ckpt"]), VISUALIZE) == []


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.image_size=-5", "data.image_size=-5: must be an integer in [32, 2048]"),
        ("data.image_size=abc", "data.image_size=abc: must be an integer in [32, 2048]"),
        ("data.image_size=64.5", "data.image_size=64.5: must be an integer"),
        ("data.batch_size=0", "data.batch_size=0: must be an integer >= 2 (BatchNorm"),
        ("data.batch_size=1", "data.batch_size=1: must be an integer >= 2 (BatchNorm"),
        ("seed=-1", "seed=-1: must be an integer in [0, 4294967295]"),
        ("data.crop_scale_min=-0.2", "data.crop_scale_min=-0.2: must be a number in (0, 1]"),
        ("data.fraction=1.5", "data.fraction=1.5: must be a number in (0, 1]"),
        ("data.augment=yes", "data.augment=yes: must be true or false"),
        ("data.normalization=zscore", "data.normalization=zscore: must be one of imagenet"),
        ("model.freeze=everything", "model.freeze=everything: must be one of none, backbone, up_to_layer4"),
        ("model.arch=resnet19", "model.arch=resnet19: must be one of efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, resnet152, resnet18, resnet50"),
        ("model.optimizer.lr=0", "model.optimizer.lr=0: must be a number > 0"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0: must be an integer >= 1 (a run of 0 epochs trains nothing"),
    ],
)
def test_bad_option_names_key_value_and_range(override, expected):
    with pytest.raises(ConfigError) as err:
        check_config(compose_cfg("train", [override]), TRAIN)
    assert expected in str(err.value)
    assert str(err.value).count("\n") == 1  # that key alone


def test_all_bad_options_are_reported_at_once_and_an_interpolated_copy_once():
    with pytest.raises(ConfigError) as err:
        check_config(compose_cfg("train", ["seed=-1", "data.batch_size=1", "trainer.max_epochs=0"]), TRAIN)
    text = str(err.value)
    assert text.startswith("3 invalid options (nothing was started):")
    assert "data.seed" not in text  # data.seed=${seed}: reported under seed only


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("n_per_class=0", "n_per_class=0: must be an integer >= 1"),
        ("methods=[gradcam,gradcam++]", "must be a non-empty list of gradcam, eigencam"),
        ("device=gpu", "device=gpu: must be cpu, cuda"),
        ("faithfulness_fraction=1", "faithfulness_fraction=1: must be a number in (0, 1)"),
    ],
)
def test_bad_visualize_option(override, expected):
    with pytest.raises(ConfigError, match=None) as err:
        check_config(compose_cfg("visualize", ["ckpt=a.ckpt", override]), VISUALIZE)
    assert expected in str(err.value)


def test_missing_ckpt_is_named():
    with pytest.raises(ConfigError, match=r"ckpt is not set: it must be a .ckpt file"):
        check_config(compose_cfg("visualize", []), VISUALIZE)


def test_the_rule_engine_imports_no_covidnet_module():
    """covidnet/core/options.py is the bottom of the config layer: the owners of the keys import it, never it them."""
    tree = ast.parse((ROOT / "covidnet" / "core" / "options.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in imported if m and m.split(".")[0] == "covidnet"], imported


@pytest.mark.parametrize("freeze", ["none", "backbone"])
def test_freeze_modes_of_efficientnet_lite0_pass(freeze):
    assert problems(compose_cfg("train", ["model.arch=efficientnet_lite0", f"model.freeze={freeze}"]), TRAIN) == []


def test_freeze_mode_the_arch_lacks_is_one_problem():
    """A rule across keys: EfficientNet-Lite0 has no up_to_layer4; refused by the check, not by the model's constructor."""
    found = problems(compose_cfg("train", ["model.arch=efficientnet_lite0", "model.freeze=up_to_layer4"]), TRAIN)
    assert found == ["model.freeze=up_to_layer4: must be one of none, backbone for model.arch=efficientnet_lite0 (the modes it defines)"]
    assert problems(compose_cfg("train", ["model.arch=resnet18", "model.freeze=up_to_layer4"]), TRAIN) == []
    # an unknown mode is named once, by its own rule (the rule across keys is not asked)
    assert len(problems(compose_cfg("train", ["model.arch=efficientnet_lite0", "model.freeze=bogus"]), TRAIN)) == 1


def test_an_init_whose_weights_exist_for_one_arch_refuses_another():
    """init=ct has ResNet-152 weights only: refused by the check (one problem), not when the model is built."""
    found = problems(compose_cfg("train", ["init=ct", "model.arch=resnet18"]), TRAIN)
    assert found == ["model.arch=resnet18: init=ct provides resnet152 weights only; set model.arch=resnet152 (got resnet18)."]
    assert problems(compose_cfg("train", ["init=ct"]), TRAIN) == []
    assert problems(compose_cfg("train", ["init=scratch", "model.arch=resnet50"]), TRAIN) == []


def test_train_checks_before_reading_any_data(tmp_path):
    """The data root does not exist: had anything been read, the error would be about the data."""
    cfg = compose_cfg("train", ["data.batch_size=1", f"data.root={tmp_path / 'nowhere'}", f"paths.output_dir={tmp_path / 'out'}"])
    with pytest.raises(ConfigError, match=r"data.batch_size=1"):
        train(cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_train_py_bad_option_is_one_message_without_traceback(tmp_path):
    args = ["data.image_size=abc", "seed=-1", f"data.root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_entry("train.py", *args)
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "data.image_size=abc: must be an integer" in result.stderr and "seed=-1: must be" in result.stderr
    assert "HYDRA_FULL_ERROR=1 shows the traceback" in result.stderr
    assert "2 invalid options" in (tmp_path / "run" / "train.log").read_text()  # the run directory says why

    full = run_entry("train.py", *args[:-1], f"hydra.run.dir={tmp_path / 'run2'}", env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr and "ConfigError" in full.stderr


@pytest.mark.slow
def test_train_py_refuses_a_freeze_mode_the_arch_lacks_before_any_work(tmp_path):
    args = ["model.arch=efficientnet_lite0", "model.freeze=up_to_layer4", f"data.root={tmp_path / 'nowhere'}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_entry("train.py", *args)
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "Invalid option (nothing was started):\n  model.freeze=up_to_layer4: must be one of none, backbone" in result.stderr


@pytest.mark.slow
def test_visualize_py_bad_option_is_one_message_without_traceback(tmp_path):
    result = run_entry("visualize.py", "ckpt=a.ckpt", "n_per_class=0", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "n_per_class=0: must be an integer >= 1" in result.stderr
