"""Write files so that readers (and interrupted runs) never see half a file; clean up what killed writers left.

Every file covidnet writes goes through :func:`atomic_path`: results (metrics, predictions, reports, CAM
tables), checkpoints (``durable=True``, via covidnet/rundirs/checkpoint_saving.py), exported weights, cached frozen
features and downloads. The temporary file sits beside the target, is named after the writing process
(``.<name>.<pid>.partial``, never the target's suffix, so nothing mistakes it for a result) and is renamed
onto the target only when the block finishes; a later writer of the same target removes temporaries whose
process is gone (:func:`remove_stale`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from covidnet.core.processes import pid_alive

PARTIAL_SUFFIX = ".partial"


def partial_name(path: Path, pid: int | None = None) -> Path:
    """The temporary file beside ``path`` that process ``pid`` (default: this one) writes."""
    return path.with_name(f".{path.name}.{os.getpid() if pid is None else pid}{PARTIAL_SUFFIX}")


def remove_stale(folder: Path, prefix: str, suffix: str = "") -> None:
    """Delete the files or folders ``<prefix><pid>[-...]<suffix>`` in ``folder`` whose writing process has died."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)(?:-.*)?" + re.escape(suffix))
    for stale in Path(folder).glob(f"{glob_escape(prefix)}*{glob_escape(suffix)}"):
        match = pattern.fullmatch(stale.name)
        if not match or int(match.group(1)) == os.getpid() or pid_alive(int(match.group(1))):
            continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block finishes.

    ``durable=True`` also fsyncs the file before the rename and the folder after it, so even a power cut
    leaves the previous file or the complete new one (checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, f".{path.name}.", PARTIAL_SUFFIX)
    tmp = partial_name(path)
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        try:  # make the rename itself durable; not possible on every platform
            _fsync(path.parent)
        except OSError:
            pass


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")
