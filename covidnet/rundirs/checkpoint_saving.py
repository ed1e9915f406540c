"""Checkpoint writing that a hard kill cannot half-finish.

Lightning 2.6 (``TorchCheckpointIO`` -> ``fabric.utilities.cloud_io._atomic_save``) serialises to memory and
writes through an fsspec transaction: the bytes go to ``tempfile.mkstemp()`` in ``$TMPDIR`` and are then
``shutil.move``-d onto the target. That is atomic only when ``$TMPDIR`` and the run directory share a file
system; otherwise ``shutil.move`` copies onto the target, and a kill during the copy leaves a truncated
``last.ckpt``. A killed process also leaves its temporary file in ``$TMPDIR`` and nothing is fsynced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from covidnet.core.atomic import atomic_path


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the target's directory, fsync, then ``os.replace``.

    Readers see either the previous file or the complete new one, never a mixture, even after SIGKILL
    or a power cut (the rename is atomic within one directory; the fsync orders data before the rename).
    """
    with atomic_path(path, durable=True) as tmp:
        torch.save(obj, tmp)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint plugin (``trainer.plugins`` in conf/trainer/default.yaml) using ``atomic_torch_save``
    for local paths; remote URLs keep Lightning's own writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)
