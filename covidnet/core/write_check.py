"""Whether a folder can be written, asked before any work: a run, sweep, checkpoint or output directory that
cannot be created or written is refused with its name and the fix, not found out by a crash hours later (or by
Hydra's "Unable to configure handler 'file'")."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from covidnet.core.errors import UserError


def check_writable(path: str | Path, what: str,
                   fix: str = "Choose another location (hydra.run.dir=..., hydra.sweep.dir=..., or paths.log_dir=...) or fix its permissions.") -> None:
    """Refuse, before any work, a folder that cannot be created or written (tried with a probe file); ``fix`` says
    what to pass instead."""
    target = Path(path).expanduser().absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    else:
        try:
            fd, probe = tempfile.mkstemp(prefix=".covidnet-write-check-", dir=existing)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            problem = f"{existing} is not writable ({err.strerror or err})"
    if problem:
        raise UserError(f"The {what} {target} cannot be written: {problem}. {fix}")
