"""``python visualize.py`` / ``covidnet-visualize``: CAM figure and CAM numbers for trained checkpoints (docs/cam.md).

The app is the command line only: the work is covidnet.trained.visualization's :func:`visualize`, which the sweep report's
CAM step calls too. ``python visualize.py ckpt=[a.ckpt,b.ckpt]``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from covidnet.apps.cli import hydra_app
from covidnet.trained.visualization import visualize


@hydra_app("visualize")
def main(cfg: DictConfig) -> None:
    visualize(cfg)

