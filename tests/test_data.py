"""The COVID-CT data module: labels, shapes, mixed image modes, the decode-once cache, data.fraction,
deterministic evaluation and the two normalisations; and the same module on the real official split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import covidnet.data.datamodule as data_module
from covidnet.data.datamodule import CovidCTDataModule
from covidnet.images.covid_ct_layout import COVID, NON_COVID, SPLITS, image_dir, load_grey, read_names, split_file
from covidnet.images.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

SIZE = 32


def make_dm(root, **kwargs) -> CovidCTDataModule:
    kwargs = {"image_size": SIZE, "batch_size": 8, **kwargs}
    dm = CovidCTDataModule(root=str(root), **kwargs)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def dm(synthetic_root) -> CovidCTDataModule:
    return make_dm(synthetic_root)


def listed(root, split: str) -> dict[str, int]:
    """file name -> label, straight from the split files."""
    return {name: label for label in (COVID, NON_COVID) for name in read_names(split_file(root, label, split))}


# --- synthetic data ------------------------------------------------------------------------------------


def test_labels_follow_the_split_files_covid_is_one(dm, synthetic_root):
    for split in SPLITS:
        expected = listed(synthetic_root, split)
        names = dm.split_names(split)
        labels = dm.datasets[split].labels.tolist()
        assert sorted(names) == sorted(expected)
        assert {n: int(lab) for n, lab in zip(names, labels)} == expected
        # the synthetic generator names COVID files covid_*: the label convention is COVID = 1
        assert all((lab == 1) == n.startswith("covid") for n, lab in zip(names, labels))


def test_cache_and_batches_have_the_documented_shapes(dm):
    for split in SPLITS:
        ds = dm.datasets[split]
        assert ds.images.dtype == torch.uint8
        assert ds.images.shape == (len(ds), 1, SIZE, SIZE)
        assert ds.labels.dtype == torch.float32
    x, y = next(iter(dm.val_dataloader()))
    assert x.dtype == torch.float32 and x.shape == (8, 3, SIZE, SIZE)
    assert y.shape == (8,)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, SIZE, SIZE) and torch.isfinite(x).all()


def test_mixed_modes_decode_to_the_same_grey_image(tmp_path):
    """The same grey picture stored as L, RGB, opaque RGBA and JPEG decodes to one grey array in [0, 1]."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (61, 115), dtype=np.uint8)  # the smallest official size, landscape
    decoded = {}
    for mode in ("L", "RGB", "RGBA"):
        path = tmp_path / f"img_{mode}.png"
        Image.fromarray(grey, "L").convert(mode).save(path)
        decoded[mode] = load_grey(path)
    for mode, arr in decoded.items():
        assert arr.shape == (61, 115), mode
        assert arr.dtype == np.float32 and 0 <= arr.min() and arr.max() <= 1
        np.testing.assert_allclose(arr, grey / 255.0, atol=1 / 255, err_msg=mode)
    Image.fromarray(grey, "L").convert("RGB").save(tmp_path / "img.jpg", quality=95)
    assert np.abs(load_grey(tmp_path / "img.jpg") - grey / 255.0).mean() < 0.05


def test_synthetic_data_really_mixes_modes_and_sizes(synthetic_root):
    modes, sizes = set(), set()
    for label in (COVID, NON_COVID):
        for path in image_dir(synthetic_root, label).iterdir():
            with Image.open(path) as im:
                modes.add(im.mode)
                sizes.add(im.size)
    assert {"L", "RGB", "RGBA"} <= modes
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)


def test_every_image_is_decoded_once_and_never_reread(fresh_synthetic, monkeypatch):
    calls: list = []
    real = data_module.load_grey

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(data_module, "load_grey", counting)
    dm = make_dm(fresh_synthetic, batch_size=4)
    n_images = sum(len(ds) for ds in dm.datasets.values())
    assert len(calls) == n_images == len(set(calls))
    # the files can vanish: training and evaluation only read the cache
    for label in (COVID, NON_COVID):
        for path in image_dir(fresh_synthetic, label).iterdir():
            path.unlink()
    for _ in range(2):
        for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
            for x, _ in loader:
                assert x.shape[1:] == (3, SIZE, SIZE)
    assert len(calls) == n_images


def test_fraction_keeps_a_stratified_seeded_subset(synthetic_root, dm):
    full = dict(zip(dm.split_names("train"), dm.datasets["train"].labels.tolist()))
    half = make_dm(synthetic_root, fraction=0.5, seed=1)
    names = half.split_names("train")
    labels = half.datasets["train"].labels
    n_covid = sum(1 for lab in full.values() if lab == 1)
    n_non = len(full) - n_covid
    assert int(labels.sum()) == round(0.5 * n_covid)
    assert int((labels == 0).sum()) == round(0.5 * n_non)
    assert set(names) <= set(full)
    assert all(full[n] == lab for n, lab in zip(names, labels.tolist()))
    # seeded: the same seed keeps the same images, another seed others
    assert make_dm(synthetic_root, fraction=0.5, seed=1).split_names("train") == names
    assert make_dm(synthetic_root, fraction=0.5, seed=2).split_names("train") != names
    # only the training split shrinks
    for split in ("val", "test"):
        assert half.split_names(split) == dm.split_names(split)
    # a tiny fraction still keeps both classes
    tiny = make_dm(synthetic_root, fraction=0.01)
    assert sorted(tiny.datasets["train"].labels.tolist()) == [0.0, 1.0]


def test_evaluation_is_deterministic_and_matches_model_input(dm, synthetic_root):
    def batches(loader):
        return torch.cat([x for x, _ in loader])

    first, second = batches(dm.val_dataloader()), batches(dm.val_dataloader())
    assert torch.equal(first, second)
    # CAMs and reports use model_input(path): it is exactly what evaluation feeds the model
    names = dm.split_names("val")
    for i in (0, len(names) - 1):
        label = int(dm.datasets["val"].labels[i])
        assert torch.equal(dm.model_input(image_dir(synthetic_root, label) / names[i]), first[i])
    # training is augmented: the same cached image comes out differently
    train = dm.datasets["train"]
    aug = train.augment
    assert aug is not None
    img = train.images[0]
    assert any(not torch.equal(aug(img), aug(img)) for _ in range(3))


def test_imagenet_normalisation_and_its_inverse():
    grey = torch.arange(0, 256, dtype=torch.uint8).repeat(256, 1)[None]
    x = Preprocess("imagenet")(grey)
    assert x.shape == (3, 256, 256)
    for c in range(3):
        expected = (grey[0].float() / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(x[c], expected)
    torch.testing.assert_close(Preprocess("imagenet").to_grey(x), grey[0].float() / 255)


def test_unit_normalisation_keeps_intensities_in_zero_one():
    grey = torch.tensor([[[0, 128, 255]]], dtype=torch.uint8)
    x = Preprocess("unit")(grey)
    torch.testing.assert_close(x, (grey.float() / 255).expand(3, 1, 3))


def test_normalisation_is_chosen_by_the_data_module(synthetic_root):
    unit = CovidCTDataModule(root=str(synthetic_root), image_size=SIZE, normalization="unit")
    img = torch.full((1, 4, 4), 51, dtype=torch.uint8)
    assert torch.allclose(unit.preprocess(img), torch.full((3, 4, 4), 0.2))
    with pytest.raises(ValueError, match="normalization"):
        CovidCTDataModule(root=str(synthetic_root), normalization="zscore")


# --- the real official split ---------------------------------------------------------------------------

REAL_COUNTS = {"train": (191, 234), "val": (60, 58), "test": (98, 105)}  # (COVID, non-COVID), dataset README


@pytest.fixture(scope="module")
def real_dm(real_root) -> CovidCTDataModule:
    return make_dm(real_root)


@pytest.mark.real_data
def test_real_split_sizes_and_labels(real_dm, real_root):
    for split, (n_covid, n_non) in REAL_COUNTS.items():
        labels = real_dm.datasets[split].labels
        assert int((labels == 1).sum()) == n_covid, split
        assert int((labels == 0).sum()) == n_non, split
        expected = listed(real_root, split)
        assert dict(zip(real_dm.split_names(split), labels.int().tolist())) == expected
    all_names = [n for s in SPLITS for n in real_dm.split_names(s)]
    assert len(all_names) == len(set(all_names)) == 746


@pytest.mark.real_data
def test_real_tensor_shapes(real_dm):
    for split in SPLITS:
        ds = real_dm.datasets[split]
        assert ds.images.shape == (sum(REAL_COUNTS[split]), 1, SIZE, SIZE)
        assert ds.images.dtype == torch.uint8
        # real slices are not blank: every cached image has contrast
        flat = ds.images.flatten(1).float()
        assert (flat.amax(1) - flat.amin(1) > 20).all(), split
    x, y = next(iter(real_dm.test_dataloader()))
    assert x.shape == (8, 3, SIZE, SIZE) and y.shape == (8,)
    assert set(y.tolist()) <= {0.0, 1.0}
