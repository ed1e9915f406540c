"""Bad input gets an error that names the thing and the fix; odd-but-valid input works.

Covers the dataset (layout, split lists, image files), configuration values, pretrained weights files,
checkpoints (covidnet.trained.checkpoint.load_checkpoint), non-finite losses, and that nothing is unpickled with
code execution. docs/reliability.md maps each case to its test.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException
from hydra.utils import instantiate
from PIL import Image

import covidnet.images.covid_ct_layout as dataset
from covidnet.models.backbones import build_backbone
from covidnet.models.weights_io import WeightsError, read_state_dict
from covidnet.trained.checkpoint import CheckpointError, load_checkpoint
from covidnet.data.datamodule import CovidCTDataModule
from covidnet.images.covid_ct_layout import COVID, NON_COVID, DatasetError, image_dir, load_grey, split_file
from covidnet.models.model import CovidClassifier
from covidnet.apps.train import train

ROOT = Path(__file__).resolve().parents[1]


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def setup_error(root: Path) -> str:
    with pytest.raises(DatasetError) as err:
        CovidCTDataModule(root=str(root), image_size=32).setup()
    return str(err.value)


def first_image(root: Path, split: str = "train", label: int = COVID) -> Path:
    return image_dir(root, label) / split_file(root, label, split).read_text().split()[0]


# --- dataset location and layout ---------------------------------------------------------------------
def test_missing_data_root_names_the_path_and_the_fix(tmp_path):
    msg = setup_error(tmp_path / "nowhere" / "covid-ct")
    assert str(tmp_path / "nowhere" / "covid-ct") in msg
    assert "data.root=" in msg and "data.download=true" in msg


def test_root_without_official_layout_lists_what_is_missing(fresh_synthetic):
    for split_txt in (fresh_synthetic / "Data-split" / "NonCOVID").iterdir():
        split_txt.unlink()
    msg = setup_error(fresh_synthetic)
    assert "official layout is incomplete" in msg
    assert "trainCT_NonCOVID.txt" in msg and "testCT_NonCOVID.txt" in msg
    assert "trainCT_COVID.txt" not in msg  # only what is actually missing


# --- split files -------------------------------------------------------------------------------------
def test_split_naming_a_missing_image(fresh_synthetic):
    first_image(fresh_synthetic, "val", NON_COVID).unlink()
    msg = setup_error(fresh_synthetic)
    assert "missing image" in msg and "valCT_NonCOVID.txt" in msg


def test_image_listed_in_two_splits(fresh_synthetic):
    name = first_image(fresh_synthetic, "train").name
    test_list = split_file(fresh_synthetic, COVID, "test")
    test_list.write_text(test_list.read_text() + name + "\n")
    msg = setup_error(fresh_synthetic)
    assert f"{name} is listed in both the train and test splits" in msg


def test_empty_split(fresh_synthetic):
    split_file(fresh_synthetic, COVID, "val").write_text("\n")
    msg = setup_error(fresh_synthetic)
    assert "empty split" in msg and "valCT_COVID.txt lists no image" in msg


def test_all_problems_are_reported_at_once(fresh_synthetic):
    split_file(fresh_synthetic, COVID, "val").write_text("")
    first_image(fresh_synthetic, "test", NON_COVID).unlink()
    msg = setup_error(fresh_synthetic)
    assert "2 problem(s)" in msg and "empty split" in msg and "missing image" in msg


# --- image files -------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "not_an_image", "empty_file"])
def test_undecodable_image_is_named(fresh_synthetic, damage):
    path = first_image(fresh_synthetic)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 3], "not_an_image": b"<html>404</html>", "empty_file": b""}[damage])
    msg = setup_error(fresh_synthetic)
    assert f"{path}: cannot be decoded as an image" in msg and "remove it from its split file" in msg


def test_16_bit_greyscale_png_is_read_at_its_bit_depth(fresh_synthetic):
    path = first_image(fresh_synthetic)
    grey8 = np.asarray(Image.open(path).convert("L"), dtype=np.uint16)
    full16 = path.with_suffix(".full16.png")
    Image.fromarray(grey8 * 257).save(full16)  # 16-bit using the whole range
    ct12 = path.with_suffix(".ct12.png")
    Image.fromarray(grey8 * 16).save(ct12)  # 12-bit CT values stored in a 16-bit PNG
    assert Image.open(full16).mode == Image.open(ct12).mode == "I;16"
    expected = grey8 / 255.0
    np.testing.assert_allclose(load_grey(full16), expected, atol=1e-6)
    np.testing.assert_allclose(load_grey(ct12), expected, atol=0.01)  # not darkened to 1/16

    # and it trains like any other file: listed in place of the original
    path.unlink()
    ct12.rename(path.with_suffix(".png"))
    train_list = split_file(fresh_synthetic, COVID, "train")
    train_list.write_text(train_list.read_text().replace(path.name, path.with_suffix(".png").name))
    dm = CovidCTDataModule(root=str(fresh_synthetic), image_size=32)
    dm.setup()
    i = dm.split_names("train").index(path.with_suffix(".png").name)
    assert dm.datasets["train"].images[i].float().mean() > 10  # not a near-black image


def test_tiny_image_is_refused_with_its_size(fresh_synthetic):
    path = first_image(fresh_synthetic)
    Image.new("L", (1, 1), 128).save(path.with_suffix(".png"))
    if path.suffix != ".png":
        path.unlink()
        (split := split_file(fresh_synthetic, COVID, "train")).write_text(split.read_text().replace(path.name, path.with_suffix(".png").name))
    msg = setup_error(fresh_synthetic)
    assert "1x1 pixels is too small to be a CT slice" in msg


def test_smallest_accepted_image_works(tmp_path):
    path = tmp_path / "small.png"
    Image.new("L", (dataset.MIN_SIDE, 40), 100).save(path)
    assert load_grey(path).shape == (40, dataset.MIN_SIDE)


def test_very_large_image_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (300, 200)).save(path)
    monkeypatch.setattr(dataset, "MAX_PIXELS", 300 * 200 - 1)
    with pytest.raises(DatasetError, match=r"big.png: 300x200 pixels is larger than any CT slice"):
        load_grey(path)


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height but holds no pixel data (a decompression bomb's signature)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_by_name(tmp_path):
    path = tmp_path / "bomb.png"
    png_header_only(path, 40_000, 40_000)  # 1.6 G pixels: PIL refuses to open it
    with pytest.raises(DatasetError, match=r"bomb.png: larger than any CT slice"):
        load_grey(path)


# --- configuration values ----------------------------------------------------------------------------
def test_unknown_init_lists_the_choices():
    with pytest.raises(MissingConfigException, match=r"Could not find 'init/bogus'") as err:
        compose_cfg(["init=bogus"])
    assert "scratch" in str(err.value) and "imagenet" in str(err.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.arch=resnet19", r"Unknown model.arch='resnet19'; choose one of resnet18"),
        ("model.freeze=everything", r"Unknown model.freeze='everything'; choose one of none"),
    ],
)
def test_unknown_model_value_names_key_and_choices(override, expected):
    cfg = compose_cfg([override])
    with pytest.raises(InstantiationException, match=expected):
        instantiate(cfg.model)


def test_unknown_data_normalization():
    cfg = compose_cfg(["data.normalization=zscore"])
    with pytest.raises(InstantiationException, match=r"Unknown data.normalization='zscore'"):
        instantiate(cfg.data)


def test_misspelt_option_is_refused_by_hydra():
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'model.archh'"):
        compose_cfg(["model.archh=resnet18"])


# --- pretrained weights files ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    return build_backbone("resnet18").state_dict()


def test_weights_of_another_shape_are_named(tmp_path, resnet18_state):
    state = dict(resnet18_state)
    state["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(WeightsError) as err:
        build_backbone("resnet18", "imagenet", str(tmp_path / "w.pth"))
    msg = str(err.value)
    assert "layer1.0.conv1.weight: file (32, 64, 3, 3) vs model (64, 64, 3, 3)" in msg
    assert "model.arch" in msg


def test_weights_of_another_architecture_via_config(tmp_path, resnet18_state):
    # a ResNet-18 file given to model.arch=resnet50: bottleneck tensors are missing, shared names differ in shape
    torch.save(resnet18_state, tmp_path / "resnet18.pth")
    cfg = compose_cfg(["init=imagenet", "model.arch=resnet50", f"model.weights_path={tmp_path / 'resnet18.pth'}"])
    with pytest.raises(InstantiationException, match=r"do not fit this architecture: \d+ tensors expected, \d+ in the file: \d+ missing .*of another shape .*model.arch matches the file"):
        instantiate(cfg.model)


def test_weights_file_that_fits_loads(tmp_path, resnet18_state):
    """Control for the two tests above: the same file with the right architecture is accepted."""
    torch.save(resnet18_state, tmp_path / "w.pth")
    net = build_backbone("resnet18", "imagenet", str(tmp_path / "w.pth"))
    assert torch.equal(net.state_dict()["conv1.weight"], resnet18_state["conv1.weight"])


# --- checkpoints -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory) -> Path:
    """What Lightning writes, reduced to the parts load_checkpoint reads."""
    model = CovidClassifier(arch="resnet18")
    path = tmp_path_factory.mktemp("ckpt") / "good.ckpt"
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "datamodule_hyper_parameters": {"image_size": 32}},
        path,
    )
    return path


def test_good_checkpoint_loads(good_ckpt):
    model, dm_hparams = load_checkpoint(good_ckpt)
    assert not model.training and model.hparams.arch == "resnet18" and dm_hparams == {"image_size": 32}


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"Checkpoint not found: .*nope.ckpt. Pass ckpt="):
        load_checkpoint(tmp_path / "nope.ckpt")


@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_corrupt_checkpoint(tmp_path, good_ckpt, damage):
    bad = tmp_path / "bad.ckpt"
    data = good_ckpt.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad.ckpt is not a readable checkpoint: .*; it may be truncated or corrupt\.$"):
        load_checkpoint(bad)


@pytest.mark.parametrize("content", ["bare_state_dict", "other_lightning_model"])
def test_foreign_checkpoint(tmp_path, content):
    path = tmp_path / "foreign.ckpt"
    weights = {"layer.weight": torch.zeros(2, 2)}
    obj = weights if content == "bare_state_dict" else {"state_dict": weights, "hyper_parameters": {"hidden": 8}}
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=r"foreign.ckpt is not a covidnet checkpoint"):
        load_checkpoint(path)


def test_checkpoint_whose_weights_belong_to_another_architecture(tmp_path, good_ckpt):
    ckpt = torch.load(good_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["arch"] = "resnet50"  # resnet18 weights, resnet50 claimed
    torch.save(ckpt, tmp_path / "mixed.ckpt")
    with pytest.raises(CheckpointError, match=r"do not fit the model its hyperparameters describe \(arch=resnet50\)"):
        load_checkpoint(tmp_path / "mixed.ckpt")


# --- loading never runs code from the file -----------------------------------------------------------
class RunsCodeWhenUnpickled:
    """What a malicious checkpoint carries: unpickling it calls Path.touch(marker)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_code_is_refused_and_the_code_does_not_run(tmp_path, good_ckpt):
    marker = tmp_path / "code-ran"
    ckpt = torch.load(good_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["payload"] = RunsCodeWhenUnpickled(marker)
    torch.save(ckpt, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match=r"evil.ckpt is not a readable checkpoint: it holds pickled Python objects"):
        load_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()
    torch.load(tmp_path / "evil.ckpt", weights_only=False)  # control: a full unpickle does run it
    assert marker.exists()


def test_weights_file_with_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"conv1.weight": torch.zeros(1), "payload": RunsCodeWhenUnpickled(marker)}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match=r"evil.pth is not a readable PyTorch weights file: it holds pickled Python objects"):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_every_torch_load_in_the_package_is_weights_only():
    """Guards future code: each torch.load / Trainer load in covidnet/ must say weights_only=True."""
    offenders = []
    for path in sorted((ROOT / "covidnet").glob("**/*.py")):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(|\.fit\(|\.test\(|\.validate\(|\.predict\(|load_from_checkpoint\(|get_state_dict\(", text):
            line_start = text.rfind("\n", 0, match.start()) + 1
            call = text[line_start : text.find("\n", match.end())]
            before = text[text.rfind("\n", 0, max(line_start - 1, 0) - 1) : line_start]  # the line above
            if call.lstrip().startswith("def ") or (match.group().startswith(".") and "ckpt_path" not in call):
                continue  # a definition, or a Trainer call that loads nothing
            if "weights_only=True" not in call and 'setdefault("weights_only", True)' not in before:
                offenders.append(f"{path.name}: {call.strip()}")
    assert not offenders, offenders


# --- non-finite loss ---------------------------------------------------------------------------------
TINY_NO_CKPT = ["experiment=smoke", "data.image_size=32", "data.batch_size=4", "callbacks=none", "~logger",
                "+trainer.enable_progress_bar=false", "+trainer.num_sanity_val_steps=0"]


def test_nan_input_stops_training_naming_step_and_batch(fresh_synthetic, tmp_path):
    cfg = compose_cfg([*TINY_NO_CKPT, f"data.root={fresh_synthetic}", f"paths.output_dir={tmp_path}", "model.freeze=backbone",
                       "+callbacks.poison._target_=fault_helpers.PoisonBatch", "+callbacks.poison.step=2"])
    with pytest.raises(FloatingPointError, match=r"Non-finite training loss \(nan\) at epoch 0, global step 2, batch 2\..*model.optimizer.lr"):
        train(cfg)
    assert not (tmp_path / "metrics.json").exists()


def test_diverging_learning_rate_stops_training(fresh_synthetic, tmp_path):
    cfg = compose_cfg([*TINY_NO_CKPT, f"data.root={fresh_synthetic}", f"paths.output_dir={tmp_path}", "model.optimizer.lr=1e30",
                       "model.freeze=backbone"])
    with pytest.raises(FloatingPointError, match=r"Non-finite training loss .* global step \d+, batch \d+"):
        train(cfg)
