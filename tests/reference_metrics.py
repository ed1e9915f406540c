"""Independent reference implementations, for tests that check covidnet.metrics.stats against the definitions."""

from __future__ import annotations

import math


def auroc_by_pairs(labels, probs) -> float:
    """P(score of a COVID image > score of a non-COVID image), ties counting half: the definition, by loops."""
    pos = [p for y, p in zip(labels, probs) if y == 1]
    neg = [p for y, p in zip(labels, probs) if y == 0]
    if not pos or not neg:
        return math.nan
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))
