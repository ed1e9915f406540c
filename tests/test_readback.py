"""Files read back: checkpoints, predictions, run and sweep directories, evaluation areas (docs/reliability.md,
"Files read back"). Each test was written to fail before the fix it names."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from covidnet.checkpoint import CheckpointError, load_checkpoint, read_checkpoint


# --- checkpoints -------------------------------------------------------------------------------------------------
class CallsOsSystem:
    """Unpickling this calls os.system (what a malicious checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_whose_pickle_calls_os_system_holds_pickled_objects(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"hyper_parameters": {"arch": "resnet18", "init": "scratch"}, "state_dict": {}, "x": CallsOsSystem(marker)},
               tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(tmp_path / "evil.ckpt")
    assert "holds pickled Python objects" in str(err.value) and "system" in str(err.value)
    assert "truncated or corrupt" not in str(err.value)
    assert not marker.exists()


def test_an_efficientnet_checkpoint_without_timm_names_the_extra(tmp_path, monkeypatch):
    torch.save({"hyper_parameters": {"arch": "efficientnet_lite0", "init": "scratch"}, "state_dict": {}}, tmp_path / "lite.ckpt")
    monkeypatch.setitem(sys.modules, "timm", None)  # as on an install without the lite extra
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "lite.ckpt")
    assert 'pip install -e ".[lite]"' in str(err.value)
    assert "describe a covidnet model" not in str(err.value)


# --- resume ------------------------------------------------------------------------------------------------------
def compose_train(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def test_a_resume_before_the_first_checkpoint_is_compared_with_the_runs_config(tmp_path):
    from omegaconf import OmegaConf

    from covidnet.errors import ConfigError
    from covidnet.resume import check_resume

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_train(["data.batch_size=32"]), run / ".hydra" / "config.yaml")  # killed before any checkpoint
    resume = ["ckpt_path=last", f"callbacks.model_checkpoint.dirpath={run / 'checkpoints'}"]
    with pytest.raises(ConfigError, match=r"before its first checkpoint.*\n  data.batch_size: 32 in the run, 16 now"):
        check_resume(compose_train(["data.batch_size=16", *resume]), run)
    same = check_resume(compose_train(["data.batch_size=32", *resume]), run)
    assert same is not None and same.checkpoint is None  # the same settings: Lightning starts over, as before
