"""Evaluate checkpoints on other CT data: `python evaluate.py ckpt=<sweep dir> eval=[covid_ct_md,semiseg]` (docs/external.md; the app: covidnet/apps/evaluate.py)."""

from covidnet.apps.evaluate import main  # the same main as the installed covidnet-evaluate (pyproject.toml)

if __name__ == "__main__":
    main()
