"""The callbacks folder installs as covidnet.callbacks: covidnet claims no global name but its own."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

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
