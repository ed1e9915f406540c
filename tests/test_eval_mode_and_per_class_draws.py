"""Eval mode around a prediction (covidnet/models/predict.py) and the seeded draws per class (covidnet/images/sampling.py, and
data.fraction's stratified subset in covidnet/data/training_sources.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covidnet.data.training_sources import stratified_subset
from covidnet.images.covid_ct_layout import Sample
from covidnet.models.predict import eval_mode, predict_batch
from covidnet.images.sampling import draw_per_class


def test_eval_mode_restores_the_mode_also_after_an_error():
    net = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1)).train()
    with pytest.raises(RuntimeError):
        with eval_mode(net):
            assert not net.training and not net[1].training
            raise RuntimeError("boom")
    assert net.training and net[1].training
    probs = predict_batch(net, torch.randn(4, 2))
    assert net.training and probs.shape == (4,) and ((probs > 0) & (probs < 1)).all()


def test_draws_per_class_are_seeded_sorted_and_capped():
    labels = [0, 1] * 10 + [1] * 3
    a = draw_per_class(labels, 4, seed=3, classes=(1, 0))
    assert a == draw_per_class(labels, 4, seed=3, classes=(1, 0))
    assert a != draw_per_class(labels, 4, seed=4, classes=(1, 0))
    assert all(v == sorted(v) and len(v) == 4 and all(labels[i] == c for i in v) for c, v in a.items())
    assert len(draw_per_class(labels, 50, seed=0, classes=(0,))[0]) == 10  # at most the class size
    assert draw_per_class(labels, lambda n: max(1, round(0.5 * n)), seed=0, classes=(0, 1)).keys() == {0, 1}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_training_fraction_keeps_the_images_it_always_kept(seed):
    """The draw of data.fraction is the one earlier runs used (same images for the same seed)."""
    samples = [Sample(path=__import__("pathlib").Path(f"{i}.png"), label=int(i % 3 == 0)) for i in range(40)]
    rng, keep = np.random.default_rng(seed), set()  # the former implementation, inline
    for label in (0, 1):
        idx = [i for i, s in enumerate(samples) if s.label == label]
        keep.update(rng.choice(idx, size=max(1, round(0.3 * len(idx))), replace=False).tolist())
    assert stratified_subset(samples, 0.3, seed) == [s for i, s in enumerate(samples) if i in keep]
    with pytest.raises(ValueError, match=r"data.fraction=0 must be in \(0, 1\]"):
        stratified_subset(samples, 0, seed)
