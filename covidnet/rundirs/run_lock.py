"""One process owns a run (or sweep) directory: a second one started into it is refused before any work.

Two ``train.py`` processes into one ``hydra.run.dir`` would each write metrics.json, predictions_test.csv and
checkpoints over the other's, and both exit 0. So the launching process holds an exclusive lock on
``<dir>/.covidnet.lock`` (the ``filelock`` package: an OS file lock, released by the kernel when the process
ends, however it ends) for the whole run, and writes who it is into ``<dir>/.covidnet-owner.json`` while it
holds it. A second process finds the lock taken and is refused with the owner's pid, host and start time.
A run killed before it finished leaves no lock behind, so resuming it with ``ckpt_path=last`` works as before.

The lock is taken by the process a user launched only: Lightning's DDP starts ranks > 0 as copies of the
command into the same directory, with ``LOCAL_RANK`` (and on other nodes ``NODE_RANK``) set; they belong to the
run the launching process owns. Within one process the lock is re-entrant (the Hydra callback takes it before
Hydra writes the config record, ``train`` again around the run).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from covidnet.core.atomic import write_json
from covidnet.rundirs.runs import RunDirError

LOCK_FILE = ".covidnet.lock"
OWNER_FILE = ".covidnet-owner.json"
# set by Lightning (LOCAL_RANK, NODE_RANK), torchrun (RANK, GROUP_RANK) or SLURM in the processes of one run
RANK_VARS = ("LOCAL_RANK", "NODE_RANK", "RANK", "GROUP_RANK", "SLURM_PROCID")
_held: dict[str, FileLock] = {}


def launching_process() -> bool:
    """Whether this process is the one a user started (global rank zero), not a DDP rank Lightning started."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARS)


def owner(directory: str | Path) -> dict:
    """What the owning process wrote about itself (empty when it wrote nothing readable)."""
    try:
        found = json.loads((Path(directory) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _refusal(directory: Path, what: str) -> RunDirError:
    who = owner(directory)
    name = f"process {who.get('pid', '?')} on {who.get('host', '?')}, started {who.get('started', '?')}" if who else "another process"
    command = f" ({who['command']})" if who.get("command") else ""
    option = "hydra.sweep.dir" if what == "sweep directory" else "hydra.run.dir"
    return RunDirError(f"The {what} {directory} is in use by {name}{command}: one process writes a {what}. Choose another "
                       f"{option}=... (or leave it at its default), or wait for that process to end; if it has ended, the lock is free.")


def acquire(directory: str | Path, what: str = "run directory") -> bool:
    """Take the directory's lock for this process (kept until :func:`release` or the process ends); refuse with the
    owner when another process holds it. Returns False where this process does not own runs (a DDP rank > 0)."""
    if not launching_process():
        return False
    directory = Path(directory).expanduser().resolve()
    key = str(directory)
    lock = _held.get(key)
    if lock is None:
        directory.mkdir(parents=True, exist_ok=True)
        lock = FileLock(directory / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise _refusal(directory, what) from None
    if key not in _held:
        _held[key] = lock
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "command": " ".join(sys.argv)}
        write_json(directory / OWNER_FILE, record)  # whole or not at all: a refused process reads it
    return True


def release(directory: str | Path) -> None:
    """Give one hold of the directory's lock back (re-entrant: the last one frees it)."""
    key = str(Path(directory).expanduser().resolve())
    lock = _held.get(key)
    if lock is None:
        return
    if lock.is_locked and lock.lock_counter == 1:  # the last hold: the owner record goes before the lock is freed
        (Path(key) / OWNER_FILE).unlink(missing_ok=True)
    lock.release()
    if not lock.is_locked:
        del _held[key]


@contextmanager
def owning(directory: str | Path, what: str = "run directory") -> Iterator[None]:
    """Hold the directory's lock for the block (see :func:`acquire`)."""
    took = acquire(directory, what)
    try:
        yield
    finally:
        if took:
            release(directory)
