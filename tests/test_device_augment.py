"""The GPU data path (data.device_augment): the same augmentation parameters as the CPU path, per sample seed;
close pixels; batches made on the device; exact resume. Runs on the CPU (forced), as no GPU is needed to check it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from covidnet.images.augment import augment_batch, augment_params, train_augment
from covidnet.data.datamodule import CovidCTDataModule

SIZE = 64
OPTIONS = dict(image_size=SIZE, crop_scale_min=0.7, hflip=True, rotate_degrees=10.0, jitter=0.1)


def drawn_by_torchvision(seed: int, options: dict) -> dict:
    """The parameters train_augment draws under torch.manual_seed(seed), recorded from its steps."""
    pipeline = train_augment(**options)
    seen = {}
    for step in pipeline.transforms:
        if hasattr(step, "make_params"):
            original = step.make_params

            def record(flat, original=original, name=type(step).__name__):
                params = original(flat)
                seen[name] = params
                return params

            step.make_params = record
    image = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipeline(image)
    return seen


@pytest.mark.parametrize("options", [OPTIONS, {**OPTIONS, "hflip": False, "jitter": 0.0}, {**OPTIONS, "rotate_degrees": 0.0}])
def test_parameters_are_those_the_cpu_path_draws_for_the_same_seed(options):
    flips = set()
    for seed in [0, 1, 7, 123456789, 2**61 + 5]:
        seen = drawn_by_torchvision(seed, options)
        top, left, h, w, flip, angle, brightness, contrast, contrast_first = augment_params(seed, **options).tolist()
        crop = seen["RandomResizedCrop"]
        assert (top, left, h, w) == (crop["top"], crop["left"], crop["height"], crop["width"])
        if options["hflip"]:
            flips.add(flip)
            assert ("RandomHorizontalFlip" in seen) == bool(flip)  # make_params runs only when the flip is applied
        if options["rotate_degrees"]:
            assert angle == pytest.approx(seen["RandomRotation"]["angle"], abs=1e-12)
        if options["jitter"]:
            jitter = seen["ColorJitter"]
            assert brightness == pytest.approx(jitter["brightness_factor"]) and contrast == pytest.approx(jitter["contrast_factor"])
            order = jitter["fn_idx"].tolist()
            assert bool(contrast_first) == (order.index(1) < order.index(0))
    if options["hflip"]:
        assert flips == {0.0, 1.0}


def smooth_image(seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    img = 60 + 120 * np.exp(-((yy - rng.uniform(0.3, 0.7)) ** 2 + (xx - rng.uniform(0.3, 0.7)) ** 2) / 0.05) + 40 * xx
    return torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8))[None]


def test_pixels_are_close_to_the_cpu_path():
    """One bilinear warp instead of resize + nearest rotation: close, not bit-identical (docs/performance.md)."""
    seeds = list(range(16))
    images = torch.stack([smooth_image(s) for s in seeds])
    pipeline = train_augment(**OPTIONS)
    cpu = []
    for img, seed in zip(images, seeds):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            cpu.append(pipeline(img))
    cpu = torch.stack(cpu).float()
    device = augment_batch(images, torch.stack([augment_params(s, **OPTIONS) for s in seeds])).float()
    assert device.shape == cpu.shape and device.dtype == torch.float32
    diff = (device - cpu).abs()
    inner = diff[..., 8:-8, 8:-8]  # away from the rotated corners, where nearest and bilinear differ most
    assert inner.mean() < 2.0 and diff.mean() < 4.0, (inner.mean(), diff.mean())
    # and it is not trivially close: a different seed's parameters are far off
    other = augment_batch(images, torch.stack([augment_params(s + 100, **OPTIONS) for s in seeds])).float()
    assert (other - cpu).abs().mean() > 3 * diff.mean()


def test_identity_parameters_leave_the_image_unchanged():
    img = smooth_image(0)[None]
    identity = torch.tensor([[0, 0, SIZE, SIZE, 0, 0.0, 1.0, 1.0, 0]], dtype=torch.float64)
    assert torch.equal(augment_batch(img, identity), img)
    flipped = identity.clone()
    flipped[0, 4] = 1
    assert torch.equal(augment_batch(img, flipped), img.flip(-1))


def loader_batches(root, device_augment, epochs=1):
    dm = CovidCTDataModule(root=str(root), image_size=SIZE, batch_size=8, device_augment=device_augment)
    dm.setup("fit")
    out = []
    for _ in range(epochs):
        for batch in dm.train_dataloader():
            out.append(dm.on_after_batch_transfer(batch, 0))
    return dm, out


def test_device_path_gives_the_model_input_format_and_the_same_order(synthetic_root):
    dm, device = loader_batches(synthetic_root, True)
    assert dm.uses_device_augment()
    _, cpu = loader_batches(synthetic_root, False)
    assert len(device) == len(cpu)
    for (xd, yd), (xc, yc) in zip(device, cpu):
        assert xd.shape == xc.shape and xd.dtype == xc.dtype == torch.float32
        assert torch.equal(yd, yc)  # the same images in the same order (EpochSampler)
        # per-image: close to the CPU path's augmentation of the same image with the same seed
        assert (xd - xc).abs().mean() < 0.15  # in normalised units (std ~0.22): a few grey levels
    # and deterministic: the same seed gives the same batches again
    _, again = loader_batches(synthetic_root, True)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(device, again))


def test_auto_keeps_the_cpu_path_outside_a_gpu_trainer(synthetic_root):
    dm = CovidCTDataModule(root=str(synthetic_root), image_size=SIZE, batch_size=8)
    dm.setup("fit")
    assert not dm.uses_device_augment()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, SIZE, SIZE)


def test_validation_batches_pass_through():
    dm = CovidCTDataModule(root="/nonexistent", image_size=SIZE)
    batch = (torch.zeros(2, 3, SIZE, SIZE), torch.zeros(2))
    assert dm.on_after_batch_transfer(batch, 0) is batch


def test_torchvision_pipeline_is_what_augment_params_mirrors():
    """A step added to train_augment must be mirrored in augment_params/augment_batch (this fails until it is)."""
    steps = [type(t) for t in train_augment(**OPTIONS).transforms]
    assert steps == [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.RandomRotation, v2.ColorJitter]


def test_training_runs_on_the_device_path(synthetic_root, tmp_path):
    from train_configs import tiny_cfg

    from covidnet.apps.train import train

    metrics = train(tiny_cfg(synthetic_root, tmp_path, "data.device_augment=true", "test=false"))
    assert metrics["epochs_trained"] == 1 and metrics["train_images"] > 0
