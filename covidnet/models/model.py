"""LightningModule: a one-logit network (ResNet or EfficientNet-Lite0) trained with BCEWithLogitsLoss; COVID is the positive class."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
import torch
from torch import nn
import torchmetrics.classification
from torchmetrics import MetricCollection

from covidnet.metrics import metric_registry as registry
from covidnet.models.archs import get_arch
from covidnet.models.backbones import OPTIONS as BACKBONE_OPTIONS
from covidnet.models.backbones import build_backbone
from covidnet.models.bn_calibration import batchnorm_layers, estimate_batchnorm_statistics, training_batches
from covidnet.core.options import Across, Rule, boolean, integer, number, optional, text
from covidnet.models.training_recipe import selectable_epochs, selection_score, with_warmup

# the model's own conf/model keys (covidnet.core.options); backbones (arch, freeze) and inits (init) own the others
OPTIONS: dict[str, Rule | Across] = {
    "model.weights_path": optional(text()),
    "model.backbone_lr_scale": number(0),
    "model.calibrate_bn": boolean().because("estimate frozen layers' BatchNorm statistics on the training images (docs/transfer.md)"),
    "model.optimizer.lr": number(0, lo_open=True),
    "model.optimizer.weight_decay": number(0),
    "model.label_smoothing": number(0, 1, hi_open=True).because("BCE targets become eps/2 and 1 - eps/2"),
    "model.warmup_epochs": integer(0).because("epochs of linear learning-rate warm-up before the scheduler"),
    "model.tta_flip": boolean().because("average the logits of each image and its left-right mirror at evaluation"),
    "model.select_from_epoch": integer(0).because("the first epoch whose checkpoint may be selected (val/select)"),
    "model.select_from_epoch+trainer.max_epochs": Across(("model.select_from_epoch", "trainer.max_epochs"), selectable_epochs),
}



def binary_metrics(prefix: str) -> MetricCollection:
    """Metrics on P(COVID), logged as ``<prefix><key>``: every metric of covidnet.metrics.metric_registry with a
    ``logged_as`` torchmetrics class (COVID calls at the registry's threshold where the metric makes calls).

    ``validate_args=False``: the inputs are sigmoid outputs and 0/1 labels by construction, and the checks
    (``torch.unique``, range tests) would force a GPU-to-host sync on every step (docs/performance.md).
    """
    collection = {}
    for key in registry.keys():
        metric = registry.get(key)
        if metric.logged_as is None:
            continue
        cls = getattr(torchmetrics.classification, metric.logged_as, None)
        if cls is None:
            raise ValueError(f"metric {key!r}: logged_as={metric.logged_as!r} is no torchmetrics.classification class; "
                             "name one (e.g. BinaryAccuracy) or None to leave it out of training's logs.")
        threshold = {"threshold": registry.THRESHOLD} if metric.needs_threshold else {}
        collection[key] = cls(validate_args=False, **threshold)
    return MetricCollection(collection, prefix=prefix)


def _sync_is_free(device: torch.device) -> bool:
    """Reading a tensor's value costs nothing on the CPU; on an accelerator it waits for the queued work."""
    return device.type == "cpu"


class CovidClassifier(L.LightningModule):
    """A registered architecture (ResNet-18/50/152, EfficientNet-Lite0/1/2: covidnet/models/archs.py) with one logit. Hyperparameters are plain values, so a checkpoint alone
    rebuilds the model: ``covidnet.trained.checkpoint.load_checkpoint(path)`` (the one loader; it checks the file
    and skips fetching pretrained weights, which the checkpoint's replace)."""

    def __init__(
        self,
        arch: str = "resnet18",
        init: str = "scratch",
        weights_path: str | None = None,
        freeze: str = "none",
        backbone_lr_scale: float = 1.0,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        load_pretrained: bool = True,
        calibrate_bn: bool = False,
        input_spec: dict | None = None,
        label_smoothing: float = 0.0,
        warmup_epochs: int = 0,
        tta_flip: bool = False,
        select_from_epoch: int = 0,
    ):
        super().__init__()
        # what the network's input is (covidnet.images.preprocess.InputSpec as plain values: image size, normalisation,
        # field, intensity): a checkpoint describes its own input; None in checkpoints from before it existed
        if input_spec is not None:
            input_spec = {k: (v.item() if hasattr(v, "item") else v) for k, v in dict(input_spec).items()}
        BACKBONE_OPTIONS["model.freeze"].check("model.freeze", freeze)
        self.arch = get_arch(arch)
        self.trained_modules = self.arch.trained_in(freeze)  # None: all; raises for a mode the arch lacks
        # optimizer/scheduler are Hydra partials: needed to train, not to rebuild the model
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "load_pretrained"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # A checkpoint already holds the trained weights; skip fetching pretrained ones again.
        self.net = build_backbone(arch, init if load_pretrained else "scratch", weights_path if load_pretrained else None)
        self._apply_freeze()
        self.feature_inputs = False  # see take_features
        if calibrate_bn:
            # set once the frozen layers' BatchNorm statistics are estimated (ensure_bn_calibrated); saved in
            # checkpoints like any buffer, so a resumed run does not estimate them again
            self.register_buffer("bn_calibrated", torch.zeros((), dtype=torch.bool))
        self.loss_fn = nn.BCEWithLogitsLoss()
        OPTIONS["model.label_smoothing"].check("model.label_smoothing", label_smoothing)
        OPTIONS["model.warmup_epochs"].check("model.warmup_epochs", warmup_epochs)
        OPTIONS["model.select_from_epoch"].check("model.select_from_epoch", select_from_epoch)
        OPTIONS["model.tta_flip"].check("model.tta_flip", tta_flip)
        self.train_metrics = binary_metrics("train/")
        self.val_metrics = binary_metrics("val/")
        self.test_metrics = binary_metrics("test/")
        self._train_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # this epoch's, on the device
        self._pending_loss = None  # (finite flag, loss, where) of the last step not yet checked
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []  # this validation epoch's (probs, labels)

    # --- model --------------------------------------------------------------------------------------
    # a run setting (covidnet/core/hardware.py), not a hyperparameter: a checkpoint loads in either format
    memory_format = torch.contiguous_format

    def set_channels_last(self, on: bool = True) -> CovidClassifier:
        """Keep weights and inputs channels-last (NHWC): faster convolutions with bf16 (docs/performance.md)."""
        self.memory_format = torch.channels_last if on else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        return self

    def _frozen_children(self) -> list[nn.Module]:
        trained = self.trained_modules
        if trained is None:
            return []
        return [m for name, m in self.net.named_children() if name not in trained]

    def _apply_freeze(self) -> None:
        # eval() here too: Lightning never calls train() when fitting starts (it keeps each module's mode)
        for module in self._frozen_children():
            module.requires_grad_(False)
            module.eval()

    def needs_bn_calibration(self) -> bool:
        """``calibrate_bn=true``, frozen BatchNorm layers, and their statistics not estimated yet."""
        if not self.hparams.get("calibrate_bn") or bool(self.bn_calibrated):
            return False
        return bool(batchnorm_layers(self._frozen_children()))

    def calibrate_batchnorm(self, batches) -> int:
        """Estimate the frozen layers' BatchNorm running statistics on ``batches`` of images (covidnet/models/bn_calibration.py):
        for random frozen layers, whose initial statistics (mean 0, variance 1) describe no data. Trained layers are
        left alone (training normalises them by batch statistics and updates their own). Returns the images seen."""
        frozen = self._frozen_children()
        layers = batchnorm_layers(frozen)
        n = estimate_batchnorm_statistics(self.features, batches, layers) if layers else 0
        if hasattr(self, "bn_calibrated"):
            self.bn_calibrated.fill_(True)
        return n

    def ensure_bn_calibrated(self) -> int:
        """Calibrate on the training split of the trainer's data module unless done (or not asked for); returns the
        images used. Runs when fitting starts: after Lightning restored any checkpoint (whose ``bn_calibrated`` then
        says it is done) and moved the model to its device. callbacks/frozen_features.py calls it earlier, before it
        computes features."""
        if not self.needs_bn_calibration():
            return 0
        n = self.calibrate_batchnorm(training_batches(self.trainer.datamodule, next(self.parameters()).device))
        rank_zero_info(f"BatchNorm statistics of the frozen layers estimated on {n} training images (model.calibrate_bn=true).")
        return n

    def on_fit_start(self) -> None:
        self.ensure_bn_calibrated()

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode: their BatchNorm statistics must not drift."""
        super().train(mode)
        for module in self._frozen_children():
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N,) for images (N, 3, H, W), through the whole network (in the run's memory format)."""
        return self.net(x.contiguous(memory_format=self.memory_format)).squeeze(1)

    # --- the frozen part and the trained part ---------------------------------------------------------
    def stages(self) -> list[tuple[str, nn.Module]]:
        """The network's forward pass as named steps (the arch's steps to the pooled features, flatten, the head)."""
        n, head = self.net, self.arch.head
        return [(name, getattr(n, name)) for name in self.arch.steps] + [("flatten", nn.Flatten(1)), (head, getattr(n, head))]

    def frozen_stages(self) -> list[tuple[str, nn.Module]]:
        """The steps before the first trained one (stem..layer3 for up_to_layer4, up to flatten for backbone)."""
        trained = self.trained_modules
        if trained is None:
            raise ValueError("model.freeze=none: nothing is frozen, so there are no frozen features.")
        names = [name for name, _ in self.stages()]
        return self.stages()[: names.index(trained[0])]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the frozen part's output: what ``head`` takes (and callbacks/frozen_features.py caches)."""
        for _, module in self.frozen_stages():
            x = module(x)
        return x

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The frozen part's output -> logits (N,): the trained steps only. ``head(features(x)) == forward(x)``."""
        n = len(self.frozen_stages())
        for _, module in self.stages()[n:]:
            features = module(features)
        return features.squeeze(1)

    def take_features(self, enabled: bool = True) -> None:
        """Make the steps (and :meth:`logits`) expect the frozen part's output instead of images: set by
        callbacks/frozen_features.py while its loaders serve cached features. ``forward`` always takes images."""
        if enabled:
            self.frozen_stages()  # raises for freeze=none
        self.feature_inputs = enabled

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N,) of a batch as this model's loaders serve it: images, or frozen features (take_features).

        With ``tta_flip`` and in eval mode, the mean of the logits of each image and its left-right mirror: every
        prediction path (validation, test, predictions files, evaluate.py) goes through here, so they all see the
        same test-time augmentation; training, CAMs (``forward``) and frozen features see single images."""
        if self.feature_inputs:
            return self.head(x)
        if self.hparams.get("tta_flip") and not self.training:
            return (self(x) + self(torch.flip(x, dims=(-1,)))) / 2
        return self(x)

    # --- steps --------------------------------------------------------------------------------------
    def smoothed(self, y: torch.Tensor) -> torch.Tensor:
        """Training targets with label smoothing: 0/1 become eps/2 and 1 - eps/2 (the binary form of timm's and
        torch's smoothing); evaluation losses use the true labels."""
        eps = float(self.hparams.get("label_smoothing") or 0.0)
        return y * (1 - eps) + eps / 2 if eps else y

    def _shared_step(self, batch, metrics: MetricCollection, stage: str):
        x, y = batch
        logits = self.logits(x)
        loss = self.loss_fn(logits, self.smoothed(y) if stage == "train" else y)
        probs = torch.sigmoid(logits.detach())
        if stage == "val":
            self._val_outputs.append((probs, y.long()))
        if stage == "train":
            # no per-step metric work (no host sync, no logging call): outputs stay on the device and are folded
            # into the train metrics once per epoch, in on_train_epoch_end
            self._train_outputs.append((probs, y.long(), loss.detach() * len(y)))
            return loss
        metrics.update(probs, y.long())
        self.log(f"{stage}/loss", loss.detach(), on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True, prog_bar=True)
        # Logged as Metric objects: Lightning computes them once at epoch end (AUROC needs both classes; one batch
        # may hold only one), synced across ranks in the same order on every rank. Computing them in an
        # on_*_epoch_end hook instead deadlocks DDP: rank 0's progress bar syncs the loss before that hook runs.
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=len(y))
        return probs if stage == "test" else loss  # test: P(COVID) per image, for predictions_test.csv (covidnet/models/test_predictions.py)

    def on_train_epoch_start(self) -> None:
        self._train_outputs = []

    def on_train_epoch_end(self) -> None:
        """The epoch's train loss and metrics from the outputs kept on the device: one metric update per epoch.

        Only logged here (computed and synced by Lightning after this hook, like the val metrics, so every rank
        syncs in the same order): nothing of it exists yet when rank 0's progress bar reads its metrics."""
        self._check_finite(None)
        outputs, self._train_outputs = self._train_outputs, []
        if not outputs:
            return
        probs, labels, losses = zip(*outputs)
        probs, labels = torch.cat(probs), torch.cat(labels)
        n = len(labels)
        self.log("train/loss", torch.stack(losses).sum() / n, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        self.train_metrics.update(probs, labels)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=n)

    def training_step(self, batch, batch_idx: int):
        loss = self._shared_step(batch, self.train_metrics, "train")
        self._check_finite(loss, batch_idx)
        return loss

    def _check_finite(self, loss: torch.Tensor | None, batch_idx: int | None = None) -> None:
        """Stop on a non-finite training loss. On the CPU at once; on a GPU one step late (a step's flag is read
        when the next step has been queued, and at epoch end), so no step waits for its own result."""
        pending, self._pending_loss = self._pending_loss, None
        if pending is not None and not pending[0]:  # the flag was computed with its step: nothing newer is waited for
            _, bad, (epoch, step, batch) = pending
            raise FloatingPointError(
                f"Non-finite training loss ({bad.item()}) at epoch {epoch}, global step {step}, "
                f"batch {batch}. Training stopped rather than continue on NaNs: lower model.optimizer.lr, "
                "or check the input images of this batch."
            )
        if loss is not None:
            self._pending_loss = (torch.isfinite(loss.detach()), loss.detach(), (self.current_epoch, self.global_step, batch_idx))
            if _sync_is_free(loss.device):
                self._check_finite(None)

    def validation_step(self, batch, batch_idx: int):
        self._shared_step(batch, self.val_metrics, "val")

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def on_validation_epoch_end(self) -> None:
        """Log ``val/select``, the score a checkpoint is selected by: the epoch's validation AUROC, or
        ``NOT_SELECTABLE`` (-1) before ``select_from_epoch`` (during warm-up) or when the epoch calls fewer than half
        of either validation class correctly at the 0.5 threshold (covidnet/models/training_recipe.py). So the rule cannot
        pick a checkpoint whose threshold is unusable, whatever its AUROC (monitor it with
        callbacks.model_checkpoint.monitor=val/select)."""
        outputs, self._val_outputs = self._val_outputs, []
        if not outputs:
            return
        probs, labels = (torch.cat(t) for t in zip(*outputs))
        probs, labels = self.all_gather(probs).reshape(-1), self.all_gather(labels).reshape(-1)
        self.log("val/select", selection_score(probs, labels, self.current_epoch, int(self.hparams.get("select_from_epoch") or 0)),
                 on_step=False, on_epoch=True, rank_zero_only=False)

    def test_step(self, batch, batch_idx: int):
        return self._shared_step(batch, self.test_metrics, "test")

    # --- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise RuntimeError("No optimizer was given: build the model from the Hydra config (conf/model) to train it.")
        prefix = f"{self.arch.head}."
        head = [p for n, p in self.net.named_parameters() if n.startswith(prefix) and p.requires_grad]
        body = [p for n, p in self.net.named_parameters() if not n.startswith(prefix) and p.requires_grad]
        groups = [{"params": head, "name": "head"}]
        if body:
            groups.append({"params": body, "name": "backbone"})
        optimizer = self.optimizer_factory(params=groups)
        # Scaled after the optimizer is built, so it holds whatever the learning rate came from (the partial's
        # lr, or the optimizer's own default when the partial names none); schedulers built next start from it.
        for group in optimizer.param_groups:
            if group.get("name") == "backbone":
                group["lr"] *= self.hparams.backbone_lr_scale
        warmup = int(self.hparams.get("warmup_epochs") or 0)
        if self.scheduler_factory is None and not warmup:
            return optimizer
        scheduler = with_warmup(optimizer, self.scheduler_factory, warmup)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

