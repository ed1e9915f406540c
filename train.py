"""Train a COVID-CT classifier: `python train.py -m init=scratch,imagenet` (see README.md)."""

import hydra
from omegaconf import DictConfig

from covidnet.cli import user_errors
from covidnet.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with user_errors():  # a bad option, data or checkpoint: its message alone, exit status 2
        metrics = train(cfg)
    return (metrics.get("test") or {}).get("test/auroc")


if __name__ == "__main__":
    main()
