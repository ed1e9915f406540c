"""CovidClassifier's parts (features/head) and its optimiser groups."""

from __future__ import annotations

import functools

import pytest
import torch

from covidnet.models.model import CovidClassifier


@pytest.mark.parametrize("freeze", ["backbone", "up_to_layer4"])
def test_head_of_features_is_the_whole_network(freeze):
    torch.manual_seed(0)
    model = CovidClassifier(arch="resnet18", freeze=freeze).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        features = model.features(x)
        torch.testing.assert_close(model.head(features), model(x), rtol=0, atol=0)
        model.take_features(True)  # what the steps see while cached features are served
        torch.testing.assert_close(model.logits(features), model(x), rtol=0, atol=0)
        torch.testing.assert_close(model(x), model.net(x).squeeze(1))  # forward always takes images
    assert features.shape[1] != 3 and [n for n, _ in model.frozen_stages()][-1] == ("flatten" if freeze == "backbone" else "layer3")


def test_an_unfrozen_model_has_no_frozen_features():
    model = CovidClassifier(arch="resnet18", freeze="none")
    with pytest.raises(ValueError, match="model.freeze=none"):
        model.take_features(True)
    assert model.logits(torch.randn(2, 3, 32, 32)).shape == (2,)


@pytest.mark.parametrize(
    "optimizer",
    [functools.partial(torch.optim.AdamW), functools.partial(torch.optim.SGD, lr=0.05), lambda params: torch.optim.Adam(params, lr=0.02)],
    ids=["partial-without-lr", "partial-with-lr", "plain-callable"],
)
def test_backbone_lr_scale_applies_whatever_sets_the_learning_rate(optimizer):
    """model.backbone_lr_scale used to be ignored unless the optimizer partial named its lr."""
    model = CovidClassifier(arch="resnet18", init="scratch", backbone_lr_scale=0.1, optimizer=optimizer)
    opt = model.configure_optimizers()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["backbone"] == pytest.approx(0.1 * lrs["head"])
    # the scheduler starts from the scaled rate
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)
    assert sched.base_lrs == [g["lr"] for g in opt.param_groups]
