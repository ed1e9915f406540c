"""Packaging: the callbacks folder installs as covidnet.callbacks (covidnet claims no global name but its own), the
configs are reachable from an installed (non-editable) package, and CAM defaults have one home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from covidnet.explain.cam import cam_defaults
from covidnet.core.configs import config_dir
from covidnet.trained.visualization import VisualizeError, default_settings, visualize_runs

ROOT = Path(__file__).resolve().parents[1]


def test_callbacks_are_the_package_covidnet_callbacks_of_this_checkout(tmp_path):
    assert os.readlink(ROOT / "covidnet" / "callbacks") == "../callbacks"  # the folder stays where the layout has it
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["covidnet*"]  # no top-level `callbacks` package in a wheel
    code = "import covidnet.callbacks as c, covidnet.callbacks.cam_logger as m; print(c.__file__); print(m.CamLogger is c.CamLogger)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert Path(out[0]).resolve() == (ROOT / "callbacks" / "__init__.py").resolve() and out[1] == "True"


def test_configs_name_callbacks_by_their_package():
    targets = [c["_target_"] for c in yaml.safe_load((ROOT / "conf" / "callbacks" / "default.yaml").read_text()).values()
               if isinstance(c, dict) and "_target_" in c]
    ours = [t for t in targets if not t.startswith("lightning.")]
    assert ours and all(t.startswith("covidnet.callbacks.") for t in ours), ours



def test_cam_defaults_come_from_one_file():
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        train = compose("train")
        vis = compose("visualize", overrides=["ckpt=x"])
        changed = compose("train", overrides=["callbacks.cam.layer=layer3"])
    expected = cam_defaults()
    assert set(expected) == {"methods", "layer", "target"}
    for key, value in expected.items():
        assert list(train.callbacks.cam[key]) == list(value) if key == "methods" else train.callbacks.cam[key] == value
        assert default_settings()[key] == vis[key]
    assert changed.callbacks.cam.layer == "layer3" and vis.layer == expected["layer"]


def test_visualize_runs_refuses_unknown_settings(tmp_path):
    with pytest.raises(VisualizeError, match="not a visualize setting"):
        visualize_runs([tmp_path / "x.ckpt"], tmp_path, tmp_path / "out", settings=["n_per_clas=2"])
    with pytest.raises(VisualizeError, match="not a visualize setting"):
        visualize_runs([tmp_path / "x.ckpt"], tmp_path, tmp_path / "out", settings=["out_dir=/elsewhere"])


@pytest.mark.slow
def test_the_built_wheel_carries_the_configs_and_trains_installed(tmp_path):
    """pip wheel (no network: the installed setuptools), install into a folder, compose from outside the checkout;
    then a real (tiny) training with eval_sets through the installed covidnet-train, from outside the checkout:
    the configs, the eval-set configs and every module the run imports come from the wheel."""
    from synthetic import make_dataset

    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "whl"), str(ROOT)],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "whl").glob("covidnet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for cfg in sorted(p.relative_to(ROOT / "conf") for p in (ROOT / "conf").rglob("*.yaml")):
        assert f"covidnet/conf/{cfg.as_posix()}" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True, timeout=600)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"covidnet-train", "covidnet-evaluate", "covidnet-visualize"} <= set(scripts)
    for name in scripts:
        assert (target / "bin" / name).is_file(), name
    code = ("import covidnet.core.configs as c, covidnet.trained.visualization as v; print(c.config_dir()); print(v.default_settings().methods); "
            "import sys; sys.argv = ['covidnet-train', '--cfg', 'job', 'experiment=smoke']; from covidnet.apps.train import main; main()")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert Path(lines[0]) == target / "covidnet" / "conf" and "gradcam" in lines[1]
    assert "image_size: 64" in done.stdout  # experiment=smoke composed from the installed configs

    # the smallest training that still selects a best checkpoint, tests it and scores it on an eval set
    make_dataset(tmp_path / "sets" / "covid-ct", {"train": 4, "val": 2, "test": 2})
    run = tmp_path / "run"
    tiny = ["data.image_size=32", "data.batch_size=8", "trainer.max_epochs=1", "trainer.accelerator=cpu", "threads=1",
            "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false", "++callbacks.cam=null"]
    done = subprocess.run([str(target / "bin" / "covidnet-train"), f"data.root={tmp_path / 'sets' / 'covid-ct'}", *tiny,
                           "eval_sets=[covid_ct_test]", f"eval_data={tmp_path / 'sets'}", f"hydra.run.dir={run}"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["trained"] and metrics["test"] and set(metrics["eval_sets"]) == {"covid_ct_test"}
    assert json.loads((run / "eval" / "covid_ct_test" / "metrics.json").read_text())["n_images"] == 4
    assert (run / ".hydra" / "config.yaml").is_file()  # Hydra's record, written by the installed entry point
