"""Log GradCAM/EigenCAM overlays of a fixed set of validation images to TensorBoard during training."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from covidnet.explain.cam_metrics import mass_share
from covidnet.images.lungs import segment_lungs
from covidnet.explain.cam import OPTIONS as CAM_OPTIONS
from covidnet.explain.cam import (
    cam_defaults,
    cam_grid,
    caption,
    categories_for,
    check_methods,
    check_target,
    compute_cams,
    grid_problem,
    overlay,
    panel_grid,
    target_text,
)
from covidnet.models.predict import predict_batch
from covidnet.images.sampling import draw_per_class


class CamLogger(L.Callback):
    """At the end of every ``every_n_epochs``-th validation epoch (never in the sanity check), draw each
    method's maps for ``k`` COVID and ``k`` non-COVID validation images and log them as one TensorBoard
    image per method (tag ``cam_val/<method>``) at ``global_step``, and the maps' mean share of mass inside
    the lung field (``cam_val/<method>_mass_in_lungs``, next to ``cam_val/lung_area``: a uniform map's share). ``trainer.validate`` logs the same
    set; ``trainer.test`` logs ``k`` + ``k`` test images (``cam_test/<method>``) when ``log_test``.

    The images are drawn once per split with ``seed`` and stay fixed, so epochs can be compared. Only
    global rank zero computes and logs; it runs no collective operation, so other ranks never wait on it.
    Without a TensorBoard logger (e.g. ``fast_dev_run``) it does nothing and says so once.
    """

    def __init__(self, k: int = 4, methods: Sequence[str] | None = None, target: str | None = None,
                 every_n_epochs: int = 1, seed: int = 0, log_test: bool = True, layer: str | None = None):
        defaults = cam_defaults()  # methods, target, layer left out: conf/cam/default.yaml's
        methods = defaults["methods"] if methods is None else methods
        target = defaults["target"] if target is None else target
        layer = defaults["layer"] if layer is None else layer
        if k < 1 or every_n_epochs < 1:
            raise ValueError(f"callbacks.cam: k={k} and every_n_epochs={every_n_epochs} must be at least 1.")
        self.k, self.every_n_epochs, self.seed, self.log_test = k, every_n_epochs, seed, log_test
        self.layer = CAM_OPTIONS["layer"].check("callbacks.cam.layer", layer)  # a bad layer now, not after the first epoch
        self.methods = check_methods(methods)
        self.target = check_target(target)
        self._chosen: dict[str, tuple[torch.Tensor, np.ndarray]] = {}
        self._lungs: dict[str, list[np.ndarray | None]] = {}
        self._warned = False
        self._coarse: str | None = None  # why the maps cannot localise (covidnet.explain.cam.grid_problem), once found

    # --- Lightning hooks ---------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "fit" and (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.log_cams(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.log_test:
            self.log_cams(trainer, pl_module, "test")

    # --- work ----------------------------------------------------------------------------------------------
    def log_cams(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        if not trainer.is_global_zero:
            return
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not writers:
            if not self._warned:
                warnings.warn("CamLogger: no TensorBoard logger on this trainer; class activation maps are not logged.", stacklevel=2)
                self._warned = True
            return
        x, labels = self.chosen(trainer, split)
        probs = predict_batch(pl_module, x)
        categories = categories_for(self.target, labels, probs.tolist())
        greys = self.to_grey(trainer, x)
        lungs = self.lung_fields(split, greys)
        coarse = self.coarse_maps(pl_module, x)
        area = [float(lung.mean()) for lung in lungs if lung is not None]
        for writer in writers:
            if area:
                writer.add_scalar(f"cam_{split}/lung_area", float(np.mean(area)), global_step=trainer.global_step)
        for method in self.methods:
            cams = compute_cams(pl_module, x, method, categories, self.layer)
            inside = [mass_share(c, lung) for c, lung in zip(cams, lungs) if lung is not None]
            inside = [v for v in inside if np.isfinite(v)] if not coarse else []  # a constant map's share means nothing
            for writer in writers:
                if inside:
                    # CAM mass in the lung field; compare with cam_<split>/lung_area (a uniform map's share)
                    writer.add_scalar(f"cam_{split}/{method}_mass_in_lungs", float(np.mean(inside)), global_step=trainer.global_step)
            panels = [[], []]  # COVID row, non-COVID row
            for i in range(len(x)):
                text = f"{caption(labels[i], float(probs[i]))}\n{target_text(method, categories[i], self.target)}"
                panels[0 if labels[i] == 1 else 1].append((overlay(greys[i], cams[i]), text))
            panels = [row for row in panels if row]
            title = f"{method}, {split} images, epoch {trainer.current_epoch}, step {trainer.global_step}"
            image = panel_grid(panels, title=title + (f"\nmaps cannot localise: {coarse.split(':')[0]}" if coarse else ""))
            for writer in writers:
                writer.add_image(f"cam_{split}/{method}", image, global_step=trainer.global_step, dataformats="HWC")

    def coarse_maps(self, pl_module: L.LightningModule, x: torch.Tensor) -> str | None:
        """Why this model's maps cannot localise at this input size (a 1 x 1 map at 32 px), warned about once; the
        lung-share scalar is then not logged, and the panels' title says so."""
        if self._coarse is None:
            self._coarse = grid_problem(cam_grid(pl_module, x, self.layer), self.layer) or ""
            if self._coarse:
                warnings.warn(f"CamLogger: {self._coarse}.", stacklevel=2)
        return self._coarse or None

    def chosen(self, trainer: L.Trainer, split: str) -> tuple[torch.Tensor, np.ndarray]:
        """The fixed images of a split: (network inputs, labels), COVID first; drawn on first use."""
        if split not in self._chosen:
            loaders = trainer.val_dataloaders if split == "val" else trainer.test_dataloaders
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            dataset = loader.dataset
            if hasattr(dataset, "labels"):
                labels = np.asarray(dataset.labels).astype(int)
            else:
                labels = np.asarray([int(dataset[i][1]) for i in range(len(dataset))])
            for label in (1, 0):
                if (labels == label).sum() < self.k:
                    warnings.warn(f"CamLogger: the {split} split has {(labels == label).sum()} images of class {label}, fewer than k={self.k}.", stacklevel=2)
            drawn = draw_per_class(labels, self.k, self.seed, classes=(1, 0))
            index = drawn[1] + drawn[0]
            x = torch.stack([torch.as_tensor(dataset[i][0]) for i in index])
            self._chosen[split] = (x, labels[index])
        return self._chosen[split]

    def lung_fields(self, split: str, greys: np.ndarray) -> list[np.ndarray | None]:
        """Lung field of each fixed image (covidnet/images/lungs.py on the network input), segmented once per split."""
        key = f"lungs_{split}"
        if key not in self._lungs:
            self._lungs[key] = [segment_lungs(g) for g in greys]
        return self._lungs[key]

    @staticmethod
    def to_grey(trainer: L.Trainer, x: torch.Tensor) -> np.ndarray:
        """De-normalised grey images by the data module's own inverse (min-max scaled without one)."""
        preprocess = getattr(trainer.datamodule, "preprocess", None)
        if preprocess is not None:
            return preprocess.to_grey(x).numpy()
        g = x[:, 0]
        lo, hi = g.amin(dim=(1, 2), keepdim=True), g.amax(dim=(1, 2), keepdim=True)
        return ((g - lo) / (hi - lo).clamp_min(1e-8)).numpy()
