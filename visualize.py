"""Draw and measure GradCAM/EigenCAM maps: `python visualize.py ckpt=[a.ckpt,b.ckpt]` (docs/cam.md; the app: covidnet/apps/visualize.py)."""

from covidnet.apps.visualize import main  # the same main as the installed covidnet-visualize (pyproject.toml)

if __name__ == "__main__":
    main()
