"""The training recipe's schedule and checkpoint rule, apart from the model that uses them (covidnet/models/model.py).

- :func:`with_warmup`: linear learning-rate warm-up before the configured scheduler (``model.warmup_epochs``).
- :func:`selection_score`: what ``val/select`` logs, the score a checkpoint is selected by: the validation AUROC,
  or :data:`NOT_SELECTABLE` during warm-up (``model.select_from_epoch``) and for an epoch whose threshold is not
  usable: one that calls fewer than half of either validation class correctly at P(COVID) > 0.5. AUROC ranks and
  ignores the threshold, so without this an epoch that calls 117 of 118 validation images COVID (specificity 0)
  can be chosen for its ranking, and then calls nearly every test image COVID too.
"""

from __future__ import annotations

import torch

from covidnet.metrics.metric_registry import THRESHOLD

# the selection score of an epoch that may not be selected: below any AUROC
NOT_SELECTABLE = -1.0
# the share of each validation class an epoch must call correctly at the 0.5 threshold to be selectable
MIN_CLASS_RECALL = 0.5

def with_warmup(optimizer: torch.optim.Optimizer, scheduler_factory, warmup_epochs: int):
    """The configured scheduler, preceded by ``warmup_epochs`` epochs of linear warm-up from 1 % of each group's
    learning rate (torch's LinearLR + SequentialLR, as timm's warm-up). The scheduler then starts at its own
    epoch 0: a cosine with ``T_max=trainer.max_epochs`` ends at about 1 % of the peak instead of 0 after a short
    warm-up, which is kept rather than making T_max depend on two keys."""
    from torch.optim.lr_scheduler import ConstantLR, LinearLR, SequentialLR

    if not warmup_epochs:
        return scheduler_factory(optimizer=optimizer)
    warm = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup_epochs)
    after = scheduler_factory(optimizer=optimizer) if scheduler_factory is not None else ConstantLR(optimizer, factor=1.0, total_iters=0)
    return SequentialLR(optimizer, [warm, after], milestones=[warmup_epochs])


def selection_score(probs: torch.Tensor, labels: torch.Tensor, epoch: int, select_from_epoch: int) -> torch.Tensor:
    """Validation AUROC where the epoch may be selected, else ``NOT_SELECTABLE`` (module docstring)."""
    from torchmetrics.functional.classification import binary_auroc

    covid = labels.bool()
    if epoch < select_from_epoch or bool(covid.all()) or not bool(covid.any()):
        return torch.tensor(NOT_SELECTABLE)
    called = probs > THRESHOLD  # a COVID call as every metric here makes it
    sensitivity, specificity = called[covid].float().mean().item(), (~called[~covid]).float().mean().item()
    if min(sensitivity, specificity) < MIN_CLASS_RECALL:
        return torch.tensor(NOT_SELECTABLE)
    return binary_auroc(probs.float(), labels.long()).detach().cpu()


def selectable_epochs(values: dict) -> list[str]:
    """``model.select_from_epoch`` must leave an epoch to select: otherwise every epoch scores NOT_SELECTABLE and
    the checkpoint tested would be an arbitrary warm-up epoch, found out only after the training."""
    first, epochs = values["model.select_from_epoch"], values["trainer.max_epochs"]
    if first >= epochs:
        return [f"model.select_from_epoch={first} with trainer.max_epochs={epochs}: no epoch could be selected (epochs are "
                f"0..{epochs - 1}); use model.select_from_epoch < {epochs}"]
    return []
