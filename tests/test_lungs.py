"""Lung fields (covidnet/images/lungs.py), the preprocessing path that uses them (covidnet/images/preprocess.py), the
source augmentation (covidnet/images/augment.py) and the lung-mass indicator (covidnet/apps/visualize.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from covidnet.images.augment import SOURCE_AUG_DEFAULTS, SourceAugment
from covidnet.data.datamodule import CovidCTDataModule
from covidnet.images.covid_ct_layout import load_grey
from covidnet.images.lungs import bounding_box, dice, segment_lungs
from covidnet.models.model import CovidClassifier
from covidnet.images.preprocess import InputSpec, Preprocess, prepare
from covidnet.explain.cam_scores import Maps, shortcut
from tests.synthetic import make_dataset


def chest(h: int = 200, w: int = 240, frame: bool = True, text: bool = True, arrow: bool = True, fov: bool = False):
    """A synthetic axial slice: dark background, bright body ellipse, two dark lungs with bright vessels;
    optionally a white frame, a caption, an arrow pointing at the right lung, a scanner field of view."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    grey = np.full((h, w), 0.03)
    if fov:  # grey air inside the reconstruction circle, black outside it
        grey[((yy - h / 2) / (0.5 * h)) ** 2 + ((xx - w / 2) / (0.5 * h)) ** 2 <= 1] = 0.3
    body = ((yy - h / 2) / (0.36 * h)) ** 2 + ((xx - w / 2) / (0.42 * w)) ** 2 <= 1
    grey[body] = 0.65
    left = ((yy - h / 2) / (0.24 * h)) ** 2 + ((xx - 0.33 * w) / (0.13 * w)) ** 2 <= 1
    right = ((yy - h / 2) / (0.24 * h)) ** 2 + ((xx - 0.67 * w) / (0.13 * w)) ** 2 <= 1
    lungs = left | right
    grey[lungs] = 0.12
    for _ in range(12):  # vessels: small bright dots inside the lungs
        cy, cx = np.argwhere(lungs)[rng.integers(lungs.sum())]
        grey[(yy - cy) ** 2 + (xx - cx) ** 2 <= 4] = 0.6
    grey += rng.normal(0, 0.02, grey.shape)
    if frame:
        grey[:2, :] = grey[-2:, :] = grey[:, :2] = grey[:, -2:] = 1.0
    if text:  # a caption "A" and a bar of letters in a corner
        grey[8:22, 10:60:6] = 1.0
        grey[8:10, 10:60] = 1.0
    if arrow:  # a white arrow from the top-right corner towards the right lung
        for t in np.linspace(0, 1, 200):
            y, x = int(5 + t * 0.25 * h), int(w - 8 - t * 0.2 * w)
            grey[y - 1 : y + 2, x - 1 : x + 2] = 1.0
    return np.clip(grey, 0, 1).astype(np.float32), lungs


@pytest.mark.parametrize("kind", ["clean", "annotated", "fov"])
def test_finds_the_known_lungs(kind):
    grey, lungs = chest(frame=kind != "clean", text=kind != "clean", arrow=kind != "clean", fov=kind == "fov")
    mask = segment_lungs(grey)
    assert mask is not None and mask.shape == grey.shape
    assert dice(mask, lungs) > 0.9
    assert not mask[:2].any() and not mask[8:22, 10:60].any()  # the frame and the caption are not lung


def test_tight_crop_lungs_touching_the_border_are_still_lungs():
    grey, lungs = chest(frame=False, text=False, arrow=False)
    h, w = grey.shape
    crop = (slice(int(0.3 * h), int(0.7 * h)), slice(int(0.12 * w), int(0.88 * w)))  # cuts through both lungs
    mask = segment_lungs(grey[crop])
    assert mask is not None
    assert dice(mask, lungs[crop]) > 0.85


@pytest.mark.parametrize("image", [np.zeros((64, 64)), np.full((64, 64), 0.7), np.pad(np.full((20, 20), 0.8), 22)])
def test_no_lungs_is_a_failure_not_a_mask(image):
    assert segment_lungs(image) is None


def test_bounding_box_margin_is_clipped_to_the_image():
    mask = np.zeros((100, 100), bool)
    mask[10:50, 20:90] = True
    assert bounding_box(mask, 0.0) == (10, 50, 20, 90)
    assert bounding_box(mask, 0.1) == (6, 54, 13, 97)
    assert bounding_box(mask, 0.5) == (0, 70, 0, 100)


def test_lung_crop_and_lung_only_remove_the_frame():
    grey, lungs = chest()
    full = prepare(grey, InputSpec(image_size=64, field="full"))
    crop = prepare(grey, InputSpec(image_size=64, field="lung_crop", crop_margin=0.02))
    only = prepare(grey, InputSpec(image_size=64, field="lung_only"))
    assert full.lungs_found is None and crop.lungs_found and only.lungs_found
    assert full.box is None and crop.box is not None
    top, bottom, left, right = crop.box
    rows, cols = np.flatnonzero(lungs.any(1)), np.flatnonzero(lungs.any(0))
    assert top <= rows[0] and bottom > rows[-1] and left <= cols[0] and right > cols[-1]  # all of the lungs
    h, w = grey.shape
    assert top > 0.1 * h and bottom < 0.9 * h and left > 0.1 * w and right < 0.9 * w  # no frame, caption or corner
    near = torch.from_numpy(ndimage.binary_dilation(only.lung_mask.numpy(), iterations=2))  # resize blurs the edge
    assert (only.image[0][~near] == 0).all()  # outside the lung field is blanked
    assert only.image[0][only.lung_mask].float().mean() > 0


def test_lung_percentile_makes_differently_windowed_slices_alike():
    grey, _ = chest(text=False, arrow=False)
    other = np.clip(0.3 + 0.5 * grey, 0, 1)  # the same slice, windowed differently
    spec = InputSpec(image_size=64, field="lung_crop", intensity="lung_percentile")
    a, b = prepare(grey, spec).image.float(), prepare(other, spec).image.float()
    plain = InputSpec(image_size=64, field="lung_crop")
    gap_plain = (prepare(grey, plain).image.float() - prepare(other, plain).image.float()).abs().mean()
    assert (a - b).abs().mean() < 0.25 * gap_plain


def test_fallback_uses_the_full_image_and_is_counted(tmp_path):
    """Blob images (tests/synthetic.py) have no lungs: each is kept whole and counted, none is dropped."""
    root = tmp_path / "covid-ct"
    make_dataset(root, {"train": 4, "val": 2, "test": 2})
    dm = CovidCTDataModule(root=str(root), image_size=32, batch_size=4, field="lung_crop")
    dm.setup()
    full = CovidCTDataModule(root=str(root), image_size=32, batch_size=4)
    full.setup()
    n = sum(len(dm.datasets[s]) for s in dm.datasets)
    assert n == 16 == sum(len(full.datasets[s]) for s in full.datasets)
    fallbacks = dm.lung_fallbacks
    assert fallbacks and set(fallbacks.values()) <= {"train", "val", "test"}
    for split in dm.datasets:
        for i, name in enumerate(dm.split_names(split)):
            if name in fallbacks:
                assert torch.equal(dm.datasets[split].images[i], full.datasets[split].images[i])


def test_training_and_evaluation_see_the_same_tensor(tmp_path):
    """The cached training/test tensor of a file == what evaluation builds from the file's float grey image
    with the checkpoint's input spec (covidnet.images.preprocess, the path evaluate.py and visualize.py use)."""
    root = tmp_path / "covid-ct"
    make_dataset(root, {"train": 2, "val": 2, "test": 2})
    grey, _ = chest()
    path = root / "Images-processed" / "CT_COVID"
    name = next(p.name for p in path.iterdir() if p.suffix == ".png" and "test" in p.name)
    Image.fromarray((grey * 255).astype(np.uint8)).save(path / name)  # a slice with lungs among the test images
    dm = CovidCTDataModule(root=str(root), image_size=48, field="lung_crop", intensity="lung_percentile")
    dm.setup()
    i = dm.split_names("test").index(name)
    cached = dm.datasets["test"].images[i]
    assert name not in dm.lung_fallbacks
    model = CovidClassifier(input_spec=dm.spec.as_dict())
    spec = InputSpec.from_dict(model.hparams.input_spec)
    assert spec == dm.spec
    assert torch.equal(prepare(load_grey(path / name), spec).image, cached)
    x_eval = Preprocess(spec.normalization)(prepare(load_grey(path / name), spec).image)
    x_train, _ = dm.datasets["test"][i]
    assert torch.equal(x_eval, x_train) and torch.equal(dm.model_input(path / name), x_train)


def test_old_checkpoint_hparams_mean_the_full_image():
    old = {"root": "x", "image_size": 128, "normalization": "unit", "batch_size": 32}  # no field / intensity keys
    spec = InputSpec.from_dict(old)
    assert (spec.field, spec.intensity, spec.image_size, spec.normalization) == ("full", "none", 128, "unit")
    with pytest.raises(ValueError, match="data.field"):
        InputSpec(field="lungs")


def test_lung_mass_indicator_inside_and_outside():
    lung = np.zeros((16, 16), bool)
    lung[4:12, 2:8] = True
    inside = np.where(lung, 1.0, 0.0)
    outside = np.where(lung, 0.0, 1.0)
    uniform = np.ones((16, 16))
    maps = Maps(torch.zeros(4, 3, 16, 16), np.zeros(4), [1] * 4, cams={"gradcam": np.stack([inside, outside, uniform, inside])},
                lungs=[lung, lung, lung, None])
    shares, area = shortcut(None, maps)
    np.testing.assert_allclose(shares["gradcam"][:3], [1.0, 0.0, lung.mean()])
    np.testing.assert_allclose(area[:3], lung.mean())
    assert np.isnan(shares["gradcam"][3]) and np.isnan(area[3])  # no lung field: undefined, not 0


def test_source_augment_is_seeded_switchable_and_keeps_the_image_format():
    x = (torch.rand(1, 32, 32) * 255).to(torch.uint8)
    aug = SourceAugment(**{**SOURCE_AUG_DEFAULTS, "p": 1.0})
    torch.manual_seed(0)
    a = aug(x)
    torch.manual_seed(0)
    b = aug(x)
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == x.shape and not torch.equal(a, x)
    for step in SourceAugment.STEPS:  # each step alone changes the image; all off is the identity
        only = SourceAugment(**{k: (v if k in (step, "p") else 0) for k, v in {**SOURCE_AUG_DEFAULTS, "p": 1.0}.items()})
        assert only.active() == [step]
        assert not torch.equal(only(x), x), step
    assert SourceAugment.from_config({k: 0 for k in SourceAugment.STEPS}) is None
    assert SourceAugment.from_config({**SOURCE_AUG_DEFAULTS, "p": 0}) is None
    with pytest.raises(ValueError, match="jpeg_quality_min"):
        SourceAugment(jpeg_quality_min=200)
