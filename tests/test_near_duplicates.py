"""Near-duplicate pictures across splits: found by picture, not by name; reported, and left out of the clean test metrics."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from covidnet.data.datamodule import CovidCTDataModule
from covidnet.images.covid_ct_layout import COVID, NON_COVID, image_dir, read_names, split_file
from covidnet.data.near_duplicates import (
    Item,
    clean_effect,
    cross_split_names,
    dataset_pairs,
    find_pairs,
    thumbnail,
    write_csv,
)
from covidnet.apps.train import without_near_duplicates


def ct_like(rng: np.random.Generator, h: int = 96, w: int = 96) -> np.ndarray:
    """A grey picture with structure at every scale (distinct pictures correlate weakly)."""
    small = rng.random((6, 6))
    img = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC), np.float32) / 255
    return np.clip(img + rng.normal(0, 0.05, (h, w)), 0, 1).astype(np.float32)


def test_the_same_picture_is_found_under_another_name_size_and_encoding():
    rng = np.random.default_rng(0)
    pics = [ct_like(rng) for _ in range(12)]
    same = np.asarray(Image.fromarray((pics[3] * 255).astype(np.uint8)).resize((150, 120), Image.BILINEAR), np.float32) / 255
    same = np.clip(same * 0.9 + 0.05, 0, 1)  # another size, contrast and brightness
    items = [Item(f"p{i}.png", i % 2, "train") for i in range(12)] + [Item("copy.jpg", 0, "test")]
    pairs = find_pairs(items, [thumbnail(p) for p in pics] + [thumbnail(same)])
    dup = [p for p in pairs if p.near_duplicate]
    assert [(p.a.name, p.b.name) for p in dup] == [("p3.png", "copy.jpg")]
    assert dup[0].correlation > 0.98 and dup[0].hamming <= 4 and dup[0].cross_split
    assert cross_split_names(pairs) == {"copy.jpg"}
    assert cross_split_names(pairs, "train", ("test",)) == {"p3.png"}


def test_a_different_picture_is_not_a_near_duplicate_even_with_a_close_hash():
    rng = np.random.default_rng(1)
    a = ct_like(rng)
    b = np.clip(a + 0.35 * ct_like(rng), 0, 1)  # shares the coarse layout, differs in detail
    pairs = find_pairs([Item("a", 0, "train"), Item("b", 0, "test")], [thumbnail(a), thumbnail(b)], review_min=-1)
    assert len(pairs) == 1 and not pairs[0].near_duplicate and pairs[0].correlation < 0.95
    flat = find_pairs([Item("a", 0, "train"), Item("f", 0, "test")], [thumbnail(a), thumbnail(np.zeros((40, 40)))], review_min=-1)
    assert flat[0].correlation == 0 and not flat[0].near_duplicate  # a blank image matches nothing


def test_data_module_warns_and_remembers_cross_split_copies(fresh_synthetic, caplog):
    # copy a training non-COVID image into the test split as a COVID image: the kjr/71% case
    train_name = read_names(split_file(fresh_synthetic, NON_COVID, "train"))[0]
    shutil.copy(image_dir(fresh_synthetic, NON_COVID) / train_name, image_dir(fresh_synthetic, COVID) / "copied.png")
    with open(split_file(fresh_synthetic, COVID, "test"), "a") as f:
        f.write("copied.png\n")
    dm = CovidCTDataModule(root=str(fresh_synthetic), image_size=32)
    with caplog.at_level(logging.WARNING, logger="covidnet.data.datamodule"):
        dm.setup("fit")
    assert dm.test_near_duplicates == {"copied.png"}
    assert "1 across splits, 1 with opposite labels" in caplog.text and train_name in caplog.text
    assert len(dm.datasets["test"]) == 7  # reported, not refused or dropped


def test_clean_metrics_leave_out_exactly_the_listed_images():
    names = ["a", "b", "c", "d", "e", "f"]
    labels = np.array([1, 1, 1, 0, 0, 0])
    probs = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.95])  # c and f are wrong
    out = without_near_duplicates(names, labels, probs, {"c", "x"})
    assert out["n_images"] == 5 and out["excluded"] == ["c"]
    assert out["test/acc"] == pytest.approx(4 / 5) and out["test/auroc"] == pytest.approx(4 / 6)
    assert "test/auroc" not in without_near_duplicates(names, labels, probs, {"a", "b", "c"})  # one class left: undefined


def test_clean_effect_interval_pairs_the_same_resamples(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([1] * 40 + [0] * 40)
    runs = []
    for k in range(2):
        probs = np.clip(labels * 0.6 + rng.random(80) * 0.4, 0, 1)
        probs[:2] = 0.0  # two COVID images called negative ...
        d = tmp_path / f"run{k}"
        d.mkdir()
        with open(d / "predictions_test.csv", "w") as f:
            f.write("file,label,prob_covid\n" + "".join(f"i{i},{y},{p:.6f}\n" for i, (y, p) in enumerate(zip(labels, probs))))
        runs.append(d)
    out = clean_effect(runs, {"i0", "i1"}, n_boot=300)  # ... are the excluded near-duplicates
    acc = out["metrics"]["acc"]
    assert out["excluded"] == ["i0", "i1"] and acc["clean"] == pytest.approx(1.0) and acc["all"] == pytest.approx(78 / 80)
    assert acc["clean_minus_all"] == pytest.approx(2 / 80 + 0.0, abs=1e-9)
    # every resample gains or stays: (1 - 2/80)^80 = 13 % of them hold neither image, hence a lower bound of 0
    assert acc["ci95"][0] == 0 and acc["ci95"][0] < acc["clean_minus_all"] < acc["ci95"][1]
    assert len(acc["per_run_clean_minus_all"]) == 2


@pytest.mark.real_data
def test_real_split_kjr_copies_of_training_images_are_found(real_root, tmp_path):
    pairs = dataset_pairs(real_root)
    assert cross_split_names(pairs) == {"kjr-21-e24-p5-29.png", "kjr-21-e24-p5-31.png"}
    cross = {(p.a.name, p.b.name): p for p in pairs if p.near_duplicate and p.cross_split}
    assert set(cross) == {("71%0.jpg", "kjr-21-e24-p5-29.png"), ("71%1.jpg", "kjr-21-e24-p5-31.png")}
    assert all(p.a.label == NON_COVID and p.b.label == COVID for p in cross.values())
    write_csv(pairs, tmp_path / "pairs.csv")
    from pathlib import Path

    committed = Path(__file__).resolve().parents[1] / "docs" / "near_duplicates.csv"
    assert (tmp_path / "pairs.csv").read_text() == committed.read_text()  # the committed list is what the code finds
