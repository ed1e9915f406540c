"""Console entry points of an installed package: ``covidnet-train`` and ``covidnet-visualize`` do what
``python train.py`` and ``python visualize.py`` do in a checkout, with the configs the package carries
(``covidnet/conf`` inside the installed package, ``conf/`` of a checkout: covidnet.configs.config_dir)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from covidnet.cli import user_errors
from covidnet.configs import config_dir

CONFIG_PATH = str(config_dir())  # absolute: Hydra then needs no package import to find it


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def train(cfg: DictConfig) -> float | None:
    from covidnet.train import train as run

    with user_errors():  # a bad option, data or checkpoint: its message alone, exit status 2
        metrics = run(cfg)
    return metrics.get("test", {}).get("test/auroc")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="visualize")
def visualize(cfg: DictConfig) -> None:
    from covidnet.visualize import visualize as run

    with user_errors():
        run(cfg)
