"""Exponential moving average of the weights, as Lightning implements it, with the test on the averaged weights.

Lightning's ``EMAWeightAveraging`` (torch's ``AveragedModel`` underneath) validates with the averaged weights and
saves them as each checkpoint's ``state_dict`` (the raw weights go to ``current_model_state``), so the checkpoint
chosen on validation, and every reader of its ``state_dict`` (evaluate.py, visualize.py), holds the averaged
weights. Its ``on_load_checkpoint`` restores the raw weights, which a resumed fit needs; but the callback still
holds its averaged model after fitting, so ``trainer.test(ckpt_path=best)`` would test the raw weights of the
best epoch, not the averaged ones that were validated. Here that restore happens only while fitting.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class EMA(EMAWeightAveraging):
    """``EMAWeightAveraging`` whose checkpoints test, like they validate, with the averaged weights."""

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
        # testing, validating, predicting: the state_dict Lightning already loaded is the averaged weights
