"""Several models scored as one: P(COVID) averaged over the members per image, on the images every member scored.

One averaging for both places that build ensembles: the sweep report's seed ensembles (covidnet.report.ensemble,
from the predictions files runs wrote) and ``evaluate.py ensemble=true`` (covidnet.trained.evaluation, from the members'
predictions of the same call). Their intervals are one computation too, :func:`covidnet.metrics.stats.bootstrap_metrics`
over images (patients where a set has them): the report calls it directly, evaluate through covidnet.metrics.set_metrics,
as for every single model, so an ensemble's row reads like its members' rows beside it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

MIN_MEMBERS = 2  # an ensemble of one model is that model


def mean_probs(members: Sequence[Mapping[Hashable, float]]) -> tuple[list, np.ndarray]:
    """``(keys, mean P(COVID))`` over ``members`` (each ``{image key: P(COVID)}``) for the keys every member scored,
    sorted: members that left different images out (a patient fold, a file cut short) are averaged where they agree."""
    keys = sorted(set.intersection(*(set(m) for m in members)))
    return keys, np.mean([[float(m[k]) for k in keys] for m in members], axis=0)


def ensemble_name(n: int) -> str:
    """The name an ensemble's results carry (summary.csv's ``model``, its folder): ``ensemble of <n>``."""
    return f"ensemble of {n}"
