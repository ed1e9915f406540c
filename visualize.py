"""Draw and measure GradCAM/EigenCAM maps: `python visualize.py ckpt=[a.ckpt,b.ckpt]` (docs/cam.md; the app: covidnet/visualize.py)."""

from covidnet.visualize import main  # the same main as the installed covidnet-visualize (pyproject.toml)

if __name__ == "__main__":
    main()
