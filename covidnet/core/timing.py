"""Seconds per training epoch, stored in metrics.json: the unit speed comparisons (benchmarks/end_to_end.py) read."""

from __future__ import annotations

import time

import lightning as L


class EpochTimes(L.Callback):
    """Wall seconds of each training epoch, from its first batch's start to its end, the epoch's validation
    (and CAM logging) included: Lightning runs validation inside the training epoch."""

    def __init__(self):
        self.seconds: list[float] = []
        self._start: float | None = None

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if self._start is not None:
            self.seconds.append(round(time.perf_counter() - self._start, 2))
            self._start = None
