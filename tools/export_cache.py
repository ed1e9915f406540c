"""Write COVID-CT as the data module caches it: each image a 224x224 grey PNG under its own name.

For a GPU machine that the 95 MB originals cannot be copied to (scripts/gpu_sessions/gpu_sweep.sh); the data
module decodes these files to exactly the tensors it makes from the originals (the script checks).
Never commit the output: the images stay their publishers' property.

    python tools/export_cache.py ../shared/data/covid-ct .devdata/covid-ct
"""

import shutil
import sys
from pathlib import Path

import torch
from PIL import Image

from covidnet.data.datamodule import CovidCTDataModule


def main(src: str, dst: str, image_size: int = 224) -> None:
    source = CovidCTDataModule(root=src, image_size=image_size)
    source.setup()
    root, out = Path(source.hparams.root), Path(dst)
    for split, samples in source.samples.items():
        for sample, image in zip(samples, source.datasets[split].images):
            path = out / sample.path.relative_to(root)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0].numpy(), "L").save(path, format="PNG", optimize=True)
    shutil.copytree(root / "Data-split", out / "Data-split", dirs_exist_ok=True)
    copy = CovidCTDataModule(root=dst, image_size=image_size)
    copy.setup()
    assert all(torch.equal(source.datasets[s].images, copy.datasets[s].images) for s in source.datasets)
    print(f"wrote {out}: cached tensors identical to those of {root}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
