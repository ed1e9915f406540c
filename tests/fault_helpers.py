"""Lightning callbacks that the fault tests inject into `python train.py` through `+callbacks.<name>=...`."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILL this process when the given global step is about to train: no cleanup, no final checkpoint."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RecordBatches(L.Callback):
    """Append `global step, digest of the batch` to a file: which data each optimiser step trained on."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, y = batch
        digest = hashlib.sha1(x.detach().cpu().numpy().tobytes() + y.cpu().numpy().tobytes()).hexdigest()[:12]
        with open(self.path, "a") as f:
            f.write(json.dumps([trainer.global_step, digest]) + "\n")


class PoisonBatch(L.Callback):
    """Turn the input of one training batch into NaNs, as a corrupt image or an overflow upstream would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            batch[0].fill_(float("nan"))
