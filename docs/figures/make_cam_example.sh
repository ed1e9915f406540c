#!/usr/bin/env bash
# Draws docs/figures/cam_synthetic_example.png, the README's CAM figure, without any dataset image:
# a ResNet-18 trained for a few epochs on the synthetic look-alike of tests/synthetic.py (COVID = a bright
# blob at a random place), then visualize.py on its synthetic test split. COVID-CT's and COVID-SemiSeg's
# terms do not allow copying their images into the repository, so no committed figure shows one; the same
# figure on the real data is `python visualize.py ckpt=<run or sweep dir> data.root=<covid-ct>` (docs/cam.md).
# Run from the repository root: bash docs/figures/make_cam_example.sh   (10 min on our 2-core CPU while it was shared; far less on a quiet one)
set -euo pipefail
WORK=$(mktemp -d)
python -c "import sys; sys.path.insert(0, 'tests'); from synthetic import make_dataset; from pathlib import Path; make_dataset(Path('$WORK/covid-ct'), {'train': 24, 'val': 6, 'test': 4}, seed=1)"
python train.py experiment=smoke data.root="$WORK/covid-ct" data.image_size=96 data.rotate_degrees=0 data.jitter=0 \
  trainer.max_epochs=6 model.optimizer.lr=1e-3 callbacks.cam=null seed=0 hydra.run.dir="$WORK/run"
python visualize.py ckpt="$WORK/run" data.root="$WORK/covid-ct" n_per_class=2 score_images=figure out_dir="$WORK/vis"
cp "$WORK/vis/figure.png" docs/figures/cam_synthetic_example.png
echo "Wrote docs/figures/cam_synthetic_example.png (work files in $WORK)"
