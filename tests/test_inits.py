"""The init registry (covidnet/inits.py): one entry per init, read by the configs, no import cycle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from covidnet.backbones import ARCHS, build_backbone
from covidnet.inits import INITS, config_default, get_init, resolve_init_defaults

ROOT = Path(__file__).resolve().parents[1]


def normalizations():
    try:
        from covidnet.preprocess import NORMALIZATIONS
    except ImportError:  # before the move to covidnet/preprocess.py
        from covidnet.datamodule import NORMALIZATIONS
    return NORMALIZATIONS


def test_every_init_names_a_known_normalisation_and_architecture():
    assert set(INITS) == {p.stem for p in (ROOT / "conf" / "init").glob("*.yaml")}  # one config per entry
    for init in INITS.values():
        assert all(init.normalization_for(arch) in normalizations() for arch in ARCHS)
        assert init.default_arch in ARCHS and (init.arch is None or init.arch in ARCHS)
        assert init.backbone_lr_scale > 0


@pytest.mark.parametrize("name", sorted(INITS))
def test_configs_take_the_init_defaults_from_the_registry(name):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"init={name}"])
        overridden = compose("train", overrides=[f"init={name}", "model.backbone_lr_scale=0.5", "data.normalization=unit"])
    init = INITS[name]
    assert (cfg.model.arch, cfg.data.normalization, cfg.model.backbone_lr_scale) == (init.default_arch, init.normalization_for(), init.backbone_lr_scale)
    assert (overridden.model.backbone_lr_scale, overridden.data.normalization) == (0.5, "unit")


@pytest.mark.parametrize("arch, expected", [("resnet18", "imagenet"), ("efficientnet_lite0", "symmetric")])
@pytest.mark.parametrize("name", ["scratch", "imagenet"])
def test_scratch_and_imagenet_see_the_inputs_the_architectures_imagenet_weights_expect(name, arch, expected):
    """Both arms of one architecture get the same inputs (only the weights differ), and those are what its ImageNet
    weights were trained on: ImageNet mean/std for torchvision's ResNets, [-1, 1] for TensorFlow's EfficientNet-Lite."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"init={name}", f"model.arch={arch}"])
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
    out = resolve_init_defaults(saved)
    assert out["model"]["arch"] == "resnet152" and out["data"]["normalization"] == "unit"
    assert out["paths"]["output_dir"] == "${hydra:runtime.output_dir}" and out["data"]["root"] == "${oc.env:NOT_SET_HERE,data}"


def test_configs_composed_after_the_model_alone_resolve_the_init():
    """The resolver is registered by covidnet.inits alone, also in a process that imported it before omegaconf."""
    code = (
        "import sys\n"
        "import covidnet.model\n"
        "assert 'omegaconf' not in sys.modules\n"
        "from hydra import compose, initialize_config_dir\n"
        f"with initialize_config_dir({str(ROOT / 'conf')!r}, version_base='1.3'):\n"
        "    cfg = compose('train', overrides=['init=ct'])\n"
        "assert (cfg.model.arch, cfg.data.normalization) == ('resnet152', 'unit'), (cfg.model.arch, cfg.data.normalization)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)


def test_weights_modules_import_without_a_cycle():
    """weights_io is the bottom (of covidnet only covidnet.errors); ct_weights and inits never import backbones."""
    code = (
        "import sys\n"
        "import covidnet.weights_io\n"
        "assert not [m for m in sys.modules if m.startswith('covidnet.') and m not in ('covidnet.weights_io', 'covidnet.errors')], sorted(sys.modules)\n"
        "import covidnet.ct_weights, covidnet.inits\n"
        "assert 'covidnet.backbones' not in sys.modules and 'covidnet.model' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)
