"""Train a COVID-CT classifier: `python train.py -m init=scratch,imagenet` (see README.md; the app: covidnet/apps/train.py)."""

from covidnet.apps.train import main  # the same main as the installed covidnet-train (pyproject.toml)

if __name__ == "__main__":
    main()
