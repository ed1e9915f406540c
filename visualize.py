"""Draw and measure GradCAM/EigenCAM maps: `python visualize.py ckpt=[a.ckpt,b.ckpt]` (see docs/cam.md)."""

import hydra
from omegaconf import DictConfig

from covidnet.cli import user_errors
from covidnet.visualize import visualize


@hydra.main(version_base="1.3", config_path="conf", config_name="visualize")
def main(cfg: DictConfig) -> None:
    with user_errors():  # a bad option, data or checkpoint: its message alone, exit status 2
        visualize(cfg)


if __name__ == "__main__":
    main()
