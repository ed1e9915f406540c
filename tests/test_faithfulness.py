"""The faithfulness control can fail: random removal with a CAM's spatial structure, both orders.

The model's decision is a known region's mean brightness, so the truth is known: a map on that region
must lose much more confidence (most relevant first) than a random map of the same structure, and
little when its least relevant pixels go. The structured control itself must register the region when
its blobs happen to fall on it; pixel-independent noise never does (ROAD imputes it away), which is why
it cannot serve as the chance level.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from covidnet.models.archs import LAYER_STRIDES
from covidnet.explain.cam_metrics import (
    RemoveTopFraction,
    block_random_cams,
    confidence_drop,
    pixel_random_cams,
)

SIZE = 64
STRIDE = 16  # a 4 x 4 map grid, as layer4 gives at 128 px
REGION = (slice(18, 46), slice(18, 46))  # 28 x 28 px: 19 % of the image


class RegionModel(nn.Module):
    """logit = 10 * (mean of the region - 0.5): COVID exactly when the region is bright."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        return (self.scale * (x[:, 0, REGION[0], REGION[1]].mean((-2, -1)) - 0.5)).reshape(-1, 1)


def images(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.2, 0.03, (n, 1, SIZE, SIZE))
    x[:, :, REGION[0], REGION[1]] = rng.normal(0.9, 0.03, (n, 1, 28, 28))
    return torch.tensor(x, dtype=torch.float32).expand(n, 3, SIZE, SIZE).contiguous()


def region_map(n: int) -> np.ndarray:
    """A smooth map peaking on the region, like an upsampled CAM that found it."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    g = np.exp(-((yy - 31.5) ** 2 + (xx - 31.5) ** 2) / (2 * 12.0**2)).astype(np.float32)
    return np.repeat(g[None], n, 0)


@pytest.fixture(scope="module")
def drops():
    n = 16
    model, x = RegionModel(), images(n)
    maps = {"region": region_map(n), "block_random": block_random_cams((n, SIZE, SIZE), STRIDE, seed=1),
            "pixel_random": pixel_random_cams((n, SIZE, SIZE), seed=1)}
    return {(name, order): confidence_drop(model, x, cams, [1] * n, 0.2, seed=0, order=order)[1]
            for name, cams in maps.items() for order in ("morf", "lerf")}


def test_map_on_the_decisive_region_beats_the_structured_control(drops):
    region, block = drops[("region", "morf")], drops[("block_random", "morf")]
    assert region.mean() > 3.0  # the region's top 20 % removed: the bright square is imputed dark
    assert region.mean() > block.mean() + 1.5
    assert (region > block).mean() > 0.9


def test_structured_control_registers_the_region_but_pixel_noise_does_not(drops):
    # Random blobs sometimes cover the region: a real, nonzero chance level ...
    block = drops[("block_random", "morf")]
    assert block.mean() > 0.3 and (block > 0.5).sum() >= 3
    # ... while isolated random pixels are filled back from their bright neighbours: ~no drop at all,
    # so a map "beating" pixel noise says nothing.
    pixel = drops[("pixel_random", "morf")]
    assert abs(pixel.mean()) < 0.15
    assert block.mean() > pixel.mean() + 0.25


def test_least_relevant_first_spares_a_faithful_map(drops):
    # LeRF removes the dark background for the region map: the decision survives
    assert abs(drops[("region", "lerf")].mean()) < 0.2
    assert drops[("block_random", "lerf")].mean() > drops[("region", "lerf")].mean() + 0.1


def test_block_random_maps_have_the_cam_grid():
    cams = block_random_cams((2, 128, 128), LAYER_STRIDES["layer4"], seed=0)
    assert cams.shape == (2, 128, 128) and cams.dtype == np.float32
    # bilinear from a 4 x 4 grid: neighbouring pixels nearly equal, unlike pixel noise
    assert np.abs(np.diff(cams, axis=-1)).max() < 0.1
    assert np.abs(np.diff(pixel_random_cams((2, 128, 128)), axis=-1)).mean() > 0.2
    # the top 20 % is a few blobs, not scattered pixels: few connected components
    from scipy import ndimage

    for c in cams:
        top = c >= np.quantile(c, 0.8)
        assert ndimage.label(top)[1] <= 4
    assert not np.array_equal(cams[0], cams[1])


def test_removal_order_is_checked():
    with pytest.raises(ValueError, match="morf"):
        RemoveTopFraction(0.2, order="best")
