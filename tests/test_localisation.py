"""Lesion localisation on a model whose map is known: a blob detector.

Its "layer4" is the input's brightness above the background, pooled 4 x 4, and its logit the mean of
that, so GradCAM (uniform positive gradient on one channel) is the brightness map itself: the maximum
sits on the blob. With masks on the blobs the pointing game is 1; with the same masks transposed or
shifted it is 0. A mix-up of mask and image orientation, or of the mask's resizing, fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from covidnet.data.datamodule import CovidCTDataModule
from covidnet.explain.cam_scores import lesion_pairs, localisation
from covidnet.trained.checkpoint import LoadedModel
from covidnet.rundirs.run_checkpoints import Chosen

SIDE = 96
CENTRES = [(0.25, 0.70), (0.70, 0.30), (0.20, 0.45), (0.80, 0.60)]  # (y, x) fractions, off the diagonal


class Brightness(nn.Module):
    def forward(self, x):
        return F.avg_pool2d(F.relu(x[:, :1] - 1.0), 4)  # ImageNet-normalised: background ~ -0.9, blob ~ 2


class BlobDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Module()
        self.net.layer4 = nn.Sequential(Brightness())  # what covidnet.explain.cam.target_layer looks for
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, x):
        return self.scale * self.net.layer4(x).mean((1, 2, 3)) - 1.0


def write_slices(folder: Path, masks) -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    for n, (cy, cx) in enumerate(CENTRES):
        blob = ((yy - cy * SIDE) ** 2 + (xx - cx * SIDE) ** 2) <= 9**2
        grey = np.clip(rng.normal(70, 10, (SIDE, SIDE)) + 170 * blob, 0, 255).astype(np.uint8)
        Image.fromarray(grey).save(folder / "images" / f"{n}.jpg", quality=95)
        Image.fromarray((masks(blob) * 255).astype(np.uint8)).save(folder / "masks" / f"{n}.png")
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> LoadedModel:
    dm = CovidCTDataModule(root=str(tmp_path_factory.mktemp("unused")), image_size=64)
    return LoadedModel("blob-detector", Path("none.ckpt"), BlobDetector().eval(), dm, Chosen(Path("none.ckpt")))


@pytest.mark.parametrize(("kind", "masks", "hits"), [
    ("aligned", lambda m: m, 1.0),
    ("transposed", lambda m: m.T, 0.0),
    ("shifted", lambda m: np.roll(m, (SIDE // 2, SIDE // 2), axis=(0, 1)), 0.0),
])
def test_pointing_game_on_a_known_map(model, tmp_path, kind, masks, hits):
    out = localisation(model, lesion_pairs(write_slices(tmp_path / kind, masks)), ["gradcam"], "label", 8, "layer4")
    assert out["n_slices"] == len(CENTRES) and out["targets"] == {"COVID": 4, "non-COVID": 0}
    assert out["gradcam"]["pointing_game_hit_rate"]["mean"] == hits
    area, mass = out["lesion_area_share"]["mean"], out["gradcam"]["mass_in_lesion"]["mean"]
    if hits:
        assert mass > 5 * area  # nearly all of the map's mass is on the blob
    else:
        assert mass < area
