"""Where the Hydra configs are, from a source checkout and from an installed package.

The configs live in the top-level ``conf/`` folder of the repository (the layout the project asks for).
``covidnet/conf`` is a link to that folder, so a built wheel ships the same files inside the package
(package data, see pyproject.toml). Code reads them through :func:`config_dir`, and the installed
entry points (covidnet.apps.cli.hydra_app) give Hydra its absolute path, without knowing which of the two it runs from.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig


@lru_cache(maxsize=1)
def config_dir() -> Path:
    """The folder holding train.yaml: ``<checkout>/conf`` beside this package, else the packaged copy."""
    here = Path(__file__).resolve().parents[1]  # the package folder (this module is covidnet/core/configs.py)
    for candidate in (here.parent / "conf", here / "conf"):  # a checkout's conf/ first: the link may be a plain file (Windows)
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"covidnet's configs are neither in {here.parent / 'conf'} (a source checkout) nor in {here / 'conf'} "
        "(an installed package); reinstall covidnet."
    )


def load(relative: str) -> DictConfig:
    """One config file as written (no defaults list applied, interpolations unresolved), e.g. ``cam/default.yaml``."""
    from omegaconf import DictConfig, OmegaConf  # here: the data module imports this package where no config is read

    cfg = OmegaConf.load(config_dir() / relative)
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{config_dir() / relative} is not a mapping.")
    return cfg
