"""Evaluate checkpoints on other CT data: `python evaluate.py ckpt=<sweep dir> eval=[covid_ct_md,semiseg]` (docs/external.md)."""

import re
import sys

import hydra
from omegaconf import DictConfig

from covidnet.cli import user_errors
from covidnet.evaluate import evaluate


def list_overrides(argv: list[str]) -> list[str]:
    """``eval=a,b`` -> ``eval=[a,b]``: a list of sets, not a sweep (Hydra would ask for --multirun)."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    return [f"eval=[{a[5:]}]" if not multirun and re.fullmatch(r"eval=[\w,]+,[\w]+", a) else a for a in argv]


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with user_errors():  # a bad option, set or checkpoint: its message alone, exit status 2
        evaluate(cfg)


if __name__ == "__main__":
    sys.argv = list_overrides(sys.argv)
    main()
