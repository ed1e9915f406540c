"""CAM module and TensorBoard CAM callback: maps point at the signal, and are safe inside Lightning."""

from __future__ import annotations

import functools
import types
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from covidnet.callbacks import CamLogger
from cam_training import IMAGE_SIZE, blob_run
from covidnet.explain.cam import compute_cams, oriented_projection
from covidnet.models.archs import LAYER_STRIDES
from covidnet.explain.cam_metrics import block_random_cams, confidence_drop, mass_share, pointing_hit
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from covidnet.models.model import CovidClassifier
from covidnet.models.predict import predict_batch
from covidnet.apps.train import instantiate_all

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return blob_run(tmp_path_factory)


def split_batch(run, split: str):
    ds = run.datamodule.datasets[split]
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    return x, ds.labels.long(), run.datamodule.split_names(split)


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


# --- maps ------------------------------------------------------------------------------------------------
def peak(cam: np.ndarray) -> np.ndarray:
    """Where a map peaks: the centre of its top plateau (upsampled maps have flat maxima)."""
    return np.argwhere(cam >= 0.95 * cam.max()).mean(axis=0)


def test_gradcam_for_covid_peaks_in_the_blob(run):
    x, y, names = split_batch(run, "test")
    probs = predict_batch(run.model, x)
    assert ((probs >= 0.5).long() == y).float().mean() >= 0.9, "the tiny model should have learnt the blob"

    covid = [i for i, n in enumerate(names) if n in run.centres]
    centres = np.array([run.centres[names[i]] for i in covid]) * IMAGE_SIZE
    # At 64 px, layer4 is a 2 x 2 grid whose every cell sees the whole image, so position is read one
    # stage earlier (layer3: 4 x 4); on 224 px CT slices layer4 is 7 x 7 (the default).
    cams = compute_cams(run.model, x[covid], "gradcam", [1] * len(covid), layer="layer3")
    assert cams.shape == (len(covid), IMAGE_SIZE, IMAGE_SIZE)
    dist = np.array([np.hypot(*(peak(c) - centre)) for c, centre in zip(cams, centres)])
    hits = int((dist <= 0.16 * IMAGE_SIZE).sum())  # within about two blob radii
    assert hits >= 0.7 * len(covid), f"GradCAM(COVID) peaked at the blob for only {hits}/{len(covid)} images: {dist.round(1)}"

    # at the default layer the two targets give different maps, and COVID's is the higher at the blob
    cams1 = compute_cams(run.model, x[covid], "gradcam", [1] * len(covid))
    cams0 = compute_cams(run.model, x[covid], "gradcam", [0] * len(covid))
    assert np.abs(cams1 - cams0).mean() > 0.1
    at_blob = lambda cams: np.array([c[int(cy), int(cx)] for c, (cy, cx) in zip(cams, centres)])  # noqa: E731
    assert np.mean(at_blob(cams1) > at_blob(cams0)) >= 0.7


def test_targets_are_required_and_checked(run):
    x, _, _ = split_batch(run, "val")
    with pytest.raises(TypeError):
        compute_cams(run.model, x, "gradcam", None)
    with pytest.raises(ValueError, match="one category"):
        compute_cams(run.model, x, "gradcam", [1])
    with pytest.raises(ValueError, match="one category"):
        compute_cams(run.model, x[:2], "gradcam", [1, 2])
    with pytest.raises(ValueError, match="gradcam, eigencam"):
        compute_cams(run.model, x, "scorecam", [1] * len(x))


def test_eigencam_sign_follows_the_activation():
    rng = np.random.default_rng(0)
    hot = rng.random((3, 16, 5, 5)) * 0.1
    hot[:, :, 1:3, 2:4] += 2.0  # every channel fires in one region
    cold = 2.0 + rng.random((3, 16, 5, 5)) * 0.1
    cold[:, :, 1:3, 2:4] = 0.0  # every channel is silent in one region
    region = {(1, 2), (1, 3), (2, 2), (2, 3)}
    for acts, peak_inside in ((hot, True), (cold, False)):
        maps = oriented_projection(acts)
        np.testing.assert_allclose(np.abs(maps), np.abs(get_2d_projection(acts)), rtol=1e-4, atol=1e-5)  # EigenCAM up to sign
        for m, a in zip(maps, acts):
            assert (np.unravel_index(np.argmax(m), m.shape) in region) == peak_inside
            assert np.corrcoef(m.ravel(), a.sum(0).ravel())[0, 1] > 0
    noise = rng.random((4, 8, 4, 4))
    for m, a in zip(oriented_projection(noise), noise):
        assert np.corrcoef(m.ravel(), a.sum(0).ravel())[0, 1] >= 0
    np.testing.assert_array_equal(oriented_projection(noise), oriented_projection(noise))


@pytest.mark.parametrize("method", ["gradcam", "eigencam"])
def test_cams_leave_the_model_as_found_even_under_inference_mode(run, method):
    x, y, _ = split_batch(run, "val")
    model = run.model
    params = list(model.parameters())
    marker = torch.full_like(params[0], 3.0)
    params[0].grad = marker.clone()  # e.g. gradients being accumulated
    hooks = hook_count(model)
    model.train()
    try:
        with torch.inference_mode():
            xi = x.clone()  # an inference tensor, as in a validation batch
            cams = compute_cams(model, xi, method, y.tolist())
        assert model.training
        assert torch.equal(params[0].grad, marker)
        assert all(p.grad is None for p in params[1:])
        assert hook_count(model) == hooks
        assert cams.shape == (len(x), IMAGE_SIZE, IMAGE_SIZE) and np.isfinite(cams).all() and cams.max() > 0
    finally:
        params[0].grad = None
        model.eval()


def test_gradcam_works_on_a_frozen_model(run):
    x, y, _ = split_batch(run, "val")
    flags = [p.requires_grad for p in run.model.parameters()]
    run.model.requires_grad_(False)
    try:
        cams = compute_cams(run.model, x, "gradcam", y.tolist())
    finally:
        for p, f in zip(run.model.parameters(), flags):
            p.requires_grad_(f)
    assert cams.max() > 0


# --- callback ----------------------------------------------------------------------------------------------
def image_events(log_dir: Path) -> dict[str, list[int]]:
    """TensorBoard image tag -> the steps it was logged at, read back from the event files."""
    steps: dict[str, list[int]] = {}
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.HasField("image") or (value.metadata.plugin_data.plugin_name == "images"):
                    steps.setdefault(value.tag, []).append(event.step)
    return steps


def small_trainer(tmp_path, callback, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=TensorBoardLogger(str(tmp_path), name="tb", version=""), callbacks=[callback],
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


def test_callback_twenty_times_without_hooks_or_gradients_left(run, tmp_path):
    cb = CamLogger(k=2, seed=1)
    trainer = small_trainer(tmp_path, cb)
    trainer.validate(run.model, datamodule=run.datamodule, verbose=False)  # 1st run, attaches the loaders
    model = run.model
    hooks = hook_count(model)
    first = cb.chosen(trainer, "val")
    for i in range(19):
        model.train(i % 2 == 0)
        with torch.inference_mode():
            cb.on_validation_epoch_end(trainer, model)
        assert model.training == (i % 2 == 0)
        assert hook_count(model) == hooks
        assert all(p.grad is None for p in model.parameters())
    model.eval()
    assert cb.chosen(trainer, "val") is first  # the set is drawn once
    x, labels = first
    assert labels.tolist() == [1, 1, 0, 0]
    trainer.logger.experiment.flush()
    events = image_events(tmp_path / "tb")
    assert {k: len(v) for k, v in events.items()} == {"cam_val/gradcam": 20, "cam_val/eigencam": 20}


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0"])
def test_callback_in_fit_validate_and_test(run, tmp_path, arch):
    cb = CamLogger(k=2, every_n_epochs=2)
    dm = run.datamodule
    model = CovidClassifier(arch=arch, optimizer=functools.partial(torch.optim.SGD, lr=0.01))
    trainer = small_trainer(tmp_path, cb, max_epochs=2, limit_train_batches=1, limit_val_batches=1, limit_test_batches=1,
                            num_sanity_val_steps=1)
    trainer.fit(model, datamodule=dm)  # sanity check skipped, epoch 0 skipped (interval), epoch 1 logged
    fit_step = trainer.global_step
    trainer.validate(model, datamodule=dm, verbose=False)
    trainer.test(model, datamodule=dm, verbose=False)
    trainer.logger.experiment.flush()
    events = image_events(tmp_path / "tb")
    assert events == {
        "cam_val/gradcam": [fit_step, fit_step],
        "cam_val/eigencam": [fit_step, fit_step],
        "cam_test/gradcam": [fit_step],
        "cam_test/eigencam": [fit_step],
    }
    assert all(p.grad is None for p in model.parameters())


def test_callback_skips_without_tensorboard_and_off_rank_zero(run, tmp_path):
    cb = CamLogger(k=1)
    trainer = L.Trainer(accelerator="cpu", fast_dev_run=True, callbacks=[cb], enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="no TensorBoard logger"):
        trainer.validate(run.model, datamodule=run.datamodule, verbose=False)
    assert cb._chosen == {}  # nothing was computed

    other_rank = types.SimpleNamespace(is_global_zero=False)  # any other attribute access would raise
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cb.log_cams(other_rank, run.model, "val")
    assert cb._chosen == {}


def test_train_config_has_the_callback_and_null_switches_it_off(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        on = compose("train", overrides=[f"paths.output_dir={tmp_path}"])
        off = compose("train", overrides=[f"paths.output_dir={tmp_path}", "callbacks.cam=null"])
        pred = compose("train", overrides=[f"paths.output_dir={tmp_path}", "callbacks.cam.target=prediction", "callbacks.cam.k=2"])
    cams = [c for c in instantiate_all(on.callbacks) if isinstance(c, CamLogger)]
    assert len(cams) == 1 and cams[0].methods == ["gradcam", "eigencam"] and cams[0].target == "label"
    assert not [c for c in instantiate_all(off.callbacks) if isinstance(c, CamLogger)]
    (p,) = [c for c in instantiate_all(pred.callbacks) if isinstance(c, CamLogger)]
    assert p.target == "prediction" and p.k == 2
    with pytest.raises(ValueError, match="label .* or prediction"):
        CamLogger(target="predicted")


# --- numbers -----------------------------------------------------------------------------------------------
def test_removing_the_blob_by_gradcam_hurts_more_than_structured_random_removal(run):
    x, _, names = split_batch(run, "test")
    covid = [i for i, n in enumerate(names) if n in run.centres]
    cams = compute_cams(run.model, x[covid], "gradcam", [1] * len(covid), layer="layer3")
    prob_drop, logit_drop = confidence_drop(run.model, x[covid], cams, [1] * len(covid), fraction=0.2)
    control = block_random_cams(cams.shape, LAYER_STRIDES["layer3"], seed=0)  # random blobs on the layer3 grid
    rand_prob, rand_logit = confidence_drop(run.model, x[covid], control, [1] * len(covid), fraction=0.2)
    assert prob_drop.shape == logit_drop.shape == (len(covid),)
    assert logit_drop.mean() > rand_logit.mean() + 1.0
    assert prob_drop.mean() >= rand_prob.mean()
    assert np.all((-1 <= prob_drop) & (prob_drop <= 1))


def test_mass_share_and_pointing_game():
    region = np.zeros((4, 4), bool)
    region[:2, :2] = True
    cam = np.zeros((4, 4))
    cam[0, 0], cam[3, 3] = 3.0, 1.0
    assert mass_share(cam, region) == pytest.approx(0.75)
    assert pointing_hit(cam, region) and not pointing_hit(cam, ~region)
    assert np.isnan(mass_share(np.zeros((4, 4)), region)) and not pointing_hit(np.zeros((4, 4)), region)
