"""The init registry (covidnet/models/inits.py) and the init config groups (conf/init): the values each init sets, the
normalisation that depends on the init and the architecture, saved configs of earlier runs, no import cycle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from covidnet.models.archs import ARCHS
from covidnet.models.backbones import build_backbone
from covidnet.models.inits import INITS, apply_arch_defaults, config_default, get_init, init_settings, resolve_saved_config, saved_config

ROOT = Path(__file__).resolve().parents[1]

# (init, model.arch override or None) -> (model.arch, data.normalization, model.backbone_lr_scale, model.calibrate_bn)
# as the configs resolved them when the values came from the ``${covidnet.init:...}`` resolver (computed on that code;
# EfficientNet-Lite1/2 as Lite0, whose weights expect the same inputs)
BY_ARCH = {
    ("scratch", None): ("resnet18", "imagenet", 1.0, True),
    ("scratch", "resnet18"): ("resnet18", "imagenet", 1.0, True),
    ("scratch", "resnet50"): ("resnet50", "imagenet", 1.0, True),
    ("scratch", "resnet152"): ("resnet152", "imagenet", 1.0, True),
    ("scratch", "efficientnet_lite0"): ("efficientnet_lite0", "symmetric", 1.0, True),
    ("scratch", "efficientnet_lite1"): ("efficientnet_lite1", "symmetric", 1.0, True),
    ("scratch", "efficientnet_lite2"): ("efficientnet_lite2", "symmetric", 1.0, True),
    ("imagenet", None): ("resnet18", "imagenet", 0.1, False),
    ("imagenet", "resnet18"): ("resnet18", "imagenet", 0.1, False),
    ("imagenet", "resnet50"): ("resnet50", "imagenet", 0.1, False),
    ("imagenet", "resnet152"): ("resnet152", "imagenet", 0.1, False),
    ("imagenet", "efficientnet_lite0"): ("efficientnet_lite0", "symmetric", 0.1, False),
    ("imagenet", "efficientnet_lite1"): ("efficientnet_lite1", "symmetric", 0.1, False),
    ("imagenet", "efficientnet_lite2"): ("efficientnet_lite2", "symmetric", 0.1, False),
    ("ct", None): ("resnet152", "unit", 0.1, False),
    ("ct", "resnet18"): ("resnet18", "unit", 0.1, False),
    ("ct", "resnet50"): ("resnet50", "unit", 0.1, False),
    ("ct", "resnet152"): ("resnet152", "unit", 0.1, False),
    ("ct", "efficientnet_lite0"): ("efficientnet_lite0", "unit", 0.1, False),
    ("ct", "efficientnet_lite1"): ("efficientnet_lite1", "unit", 0.1, False),
    ("ct", "efficientnet_lite2"): ("efficientnet_lite2", "unit", 0.1, False),
}
# (init, experiment) -> the same, the architecture the experiment's (or the init's)
BY_EXPERIMENT = {
    ("scratch", "smoke"): ("resnet18", "imagenet", 1.0, True),
    ("scratch", "cpu128"): ("resnet18", "imagenet", 1.0, True),
    ("scratch", "ct_transfer"): ("resnet152", "unit", 1.0, True),
    ("scratch", "transfer_ft"): ("resnet152", "unit", 1.0, True),
    ("scratch", "lite"): ("efficientnet_lite0", "symmetric", 1.0, True),
    ("scratch", "lite224"): ("efficientnet_lite0", "symmetric", 1.0, True),
    ("scratch", "sources"): ("resnet18", "imagenet", 1.0, True),
    ("imagenet", "smoke"): ("resnet18", "imagenet", 0.1, False),
    ("imagenet", "cpu128"): ("resnet18", "imagenet", 0.1, False),
    ("imagenet", "ct_transfer"): ("resnet152", "unit", 0.1, False),
    ("imagenet", "transfer_ft"): ("resnet152", "unit", 0.1, False),
    ("imagenet", "lite"): ("efficientnet_lite0", "symmetric", 1.0, False),
    ("imagenet", "lite224"): ("efficientnet_lite0", "symmetric", 1.0, False),
    ("imagenet", "sources"): ("resnet18", "imagenet", 0.1, False),
    ("ct", "smoke"): ("resnet152", "unit", 0.1, False),
    ("ct", "cpu128"): ("resnet152", "unit", 0.1, False),
    ("ct", "ct_transfer"): ("resnet152", "unit", 0.1, False),
    ("ct", "transfer_ft"): ("resnet152", "unit", 0.1, False),
    ("ct", "sources"): ("resnet152", "unit", 0.1, False),
}


def normalizations():
    from covidnet.images.preprocess import NORMALIZATIONS

    return NORMALIZATIONS


def compose_train(overrides: list[str]):
    """A train config as a run builds from it (covidnet.apps.train fills the architecture's normalisation in)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return apply_arch_defaults(compose("train", overrides=overrides))


def resolved(cfg) -> tuple:
    return (cfg.model.arch, cfg.data.normalization, cfg.model.backbone_lr_scale, cfg.model.calibrate_bn)


def test_every_init_names_a_known_normalisation_and_architecture():
    assert set(INITS) == {p.stem for p in (ROOT / "conf" / "init").glob("*.yaml")}  # one config per entry
    assert all(arch.normalization in normalizations() for arch in ARCHS.values())
    for init in INITS.values():
        settings = init_settings(init.name)
        assert settings["normalization"] is None or settings["normalization"] in normalizations()
        assert settings["arch"] in ARCHS and (init.arch is None or init.arch == settings["arch"])
        assert settings["backbone_lr_scale"] > 0 and isinstance(settings["calibrate_bn"], bool)


@pytest.mark.parametrize("name, arch", sorted(BY_ARCH, key=str))
def test_every_init_and_arch_resolve_as_before(name, arch):
    """Each init x architecture gives the values it gave when they came from the resolver: the init group's and,
    for scratch and imagenet, the architecture's own normalisation."""
    cfg = compose_train([f"init={name}"] + ([f"model.arch={arch}"] if arch else []))
    assert resolved(cfg) == BY_ARCH[(name, arch)]
    assert cfg.model.input_spec.normalization == cfg.data.normalization  # what the checkpoint stores


@pytest.mark.parametrize("name, experiment", sorted(BY_EXPERIMENT))
def test_every_experiment_resolves_as_before(name, experiment):
    assert resolved(compose_train([f"init={name}", f"experiment={experiment}"])) == BY_EXPERIMENT[(name, experiment)]


@pytest.mark.parametrize("name", sorted(INITS))
def test_configs_take_the_init_defaults_from_the_init_group(name):
    cfg = compose_train([f"init={name}"])
    overridden = compose_train([f"init={name}", "model.backbone_lr_scale=0.5", "data.normalization=unit"])
    settings = init_settings(name)
    normalization = settings["normalization"] or ARCHS[settings["arch"]].normalization
    assert resolved(cfg) == (settings["arch"], normalization, settings["backbone_lr_scale"], settings["calibrate_bn"])
    assert (overridden.model.backbone_lr_scale, overridden.data.normalization) == (0.5, "unit")


@pytest.mark.parametrize("arch, expected", [("resnet18", "imagenet"), ("efficientnet_lite0", "symmetric"),
                                            ("efficientnet_lite1", "symmetric"), ("efficientnet_lite2", "symmetric")])
@pytest.mark.parametrize("name", ["scratch", "imagenet"])
def test_scratch_and_imagenet_see_the_inputs_the_architectures_imagenet_weights_expect(name, arch, expected):
    """Both arms of one architecture get the same inputs (only the weights differ), and those are what its ImageNet
    weights were trained on: ImageNet mean/std for torchvision's ResNets, [-1, 1] for TensorFlow's EfficientNet-Lite."""
    cfg = compose_train([f"init={name}", f"model.arch={arch}"])
    assert cfg.data.normalization == expected


def test_registry_errors_name_the_choices():
    with pytest.raises(ValueError, match=r"Unknown init='bogus'; choose one of scratch, imagenet, ct"):
        get_init("bogus")
    with pytest.raises(ValueError, match=r"Unknown init='bogus'"):
        build_backbone("resnet18", "bogus")
    with pytest.raises(ValueError, match=r"init=ct provides resnet152 weights only; set model.arch=resnet152 \(got resnet50\)"):
        build_backbone("resnet50", "ct")
    with pytest.raises(ValueError, match="unknown field 'lr'"):
        config_default("ct", "lr")


def test_saved_configs_are_read_with_the_values_the_job_used():
    saved = {"model": {"init": "ct", "arch": "${covidnet.init:${model.init},arch}"},
             "data": {"normalization": "${covidnet.init:${model.init},normalization}", "root": "${oc.env:NOT_SET_HERE,data}"},
             "paths": {"output_dir": "${hydra:runtime.output_dir}"}}
    out = resolve_saved_config(saved)
    assert out["model"]["arch"] == "resnet152" and out["data"]["normalization"] == "unit"
    assert out["paths"]["output_dir"] == "${hydra:runtime.output_dir}" and out["data"]["root"] == "${oc.env:NOT_SET_HERE,data}"
    # an experiment's per-arm values (conf/experiment/lite224.yaml) are read as the arm's; a key that points at a
    # runtime value, directly or through another key, stays as written
    arms = {"arms": {"scratch": {"lr": 0.03, "ema": {"_target_": "covidnet.callbacks.EMA", "decay": 0.98}}, "imagenet": {"lr": 0.001, "ema": None}},
            "model": {"init": "scratch", "optimizer": {"lr": "${arms.${model.init}.lr}"}},
            "callbacks": {"ema": "${arms.${model.init}.ema}"},
            "paths": {"log_dir": "${oc.env:NOT_SET_HERE,logs}", "run": "${paths.log_dir}/run"}}
    out = resolve_saved_config(arms)
    assert out["model"]["optimizer"]["lr"] == 0.03 and out["callbacks"]["ema"] == {"_target_": "covidnet.callbacks.EMA", "decay": 0.98}
    assert out["paths"] == arms["paths"]
    arms["model"]["init"] = "imagenet"
    assert resolve_saved_config(arms)["callbacks"]["ema"] is None
    # inside lists too; a runtime value reached through a list or a quoted string is not this process's value
    lists = {"x": 3, "env": ["${oc.env:HOME,x}"], "l": ["${x}", 1], "via_list": "${env}", "n": "${oc.env:HOME,x}",
             "quoted": {"z": '"${n}'}, "via_quoted": "${quoted}"}
    out = resolve_saved_config(lists)
    assert out["l"] == [3, 1] and out["via_list"] == "${env}" and out["via_quoted"] == "${quoted}" and out["env"] == lists["env"]
    # a run saved since: the normalisation left to the architecture is shown as the job used it
    now = {"model": {"init": "imagenet", "arch": "efficientnet_lite0"}, "data": {"normalization": None}}
    assert resolve_saved_config(now)["data"]["normalization"] == "symmetric"


@pytest.mark.parametrize("name, arch", [("scratch", "efficientnet_lite0"), ("imagenet", "resnet50"), ("ct", "resnet152")])
def test_a_run_saved_with_the_resolver_resumes_without_a_difference(name, arch):
    """An earlier run's .hydra/config.yaml (values written ``${covidnet.init:...}``) compared with the config now:
    every value the same, so its resume is not refused."""
    from omegaconf import OmegaConf

    from covidnet.trained.resume import differences

    now = compose_train([f"init={name}", f"model.arch={arch}"])
    then = OmegaConf.to_container(now, resolve=False)
    then["model"].update(backbone_lr_scale="${covidnet.init:${model.init},backbone_lr_scale}",
                         calibrate_bn="${covidnet.init:${model.init},calibrate_bn}")
    then["data"]["normalization"] = "${covidnet.init:${model.init},normalization,${model.arch}}"
    if arch == init_settings(name)["arch"]:
        then["model"]["arch"] = "${covidnet.init:${model.init},arch}"
    assert differences(now, {}, saved_config(then)) == {}
    # and a difference is still seen through the old values
    then["model"]["init"] = "scratch" if name != "scratch" else "imagenet"
    assert "model.backbone_lr_scale" in differences(now, {}, saved_config(then))


def test_configs_compose_without_any_import_side_effect():
    """The init groups set their values themselves: a config composes in a process that imported no covidnet
    module, and importing the model registers no resolver."""
    code = (
        "from hydra import compose, initialize_config_dir\n"
        "from omegaconf import OmegaConf\n"
        f"with initialize_config_dir({str(ROOT / 'conf')!r}, version_base='1.3'):\n"
        "    cfg = compose('train', overrides=['init=ct'])\n"
        "assert (cfg.model.arch, cfg.data.normalization) == ('resnet152', 'unit'), (cfg.model.arch, cfg.data.normalization)\n"
        "import covidnet.models.model, covidnet.apps.train\n"
        "assert not OmegaConf.has_resolver('covidnet.init')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)


def test_weights_modules_import_without_a_cycle():
    """weights_io is the bottom (of covidnet only covidnet.core.errors, and the two folders' docstring-only packages);
    ct_weights and inits never import backbones."""
    code = (
        "import sys\n"
        "import covidnet.models.weights_io\n"
        "assert not [m for m in sys.modules if m.startswith('covidnet.') and m not in ('covidnet.models.weights_io', 'covidnet.core.errors', 'covidnet.models', 'covidnet.core')], sorted(sys.modules)\n"
        "import covidnet.models.ct_weights, covidnet.models.inits\n"
        "assert 'covidnet.models.backbones' not in sys.modules and 'covidnet.models.model' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)
