"""Which process writes an evaluation result directory, and what a killed one left behind.

An evaluation result (covidnet.run_files.write_eval: ``<out_dir>/<model>/<set>/`` or ``<run>/eval/<set>/``) is
never overwritten, and two evaluations never write the same one: before any prediction each directory gets an
``INCOMPLETE`` mark, created exclusively (``O_EXCL``) and naming its process. The mark is removed once the
directory's files are written, so one that stays says the directory is incomplete; a mark whose process has died
(a killed evaluation) is taken over, and what that process left is not a result and may be replaced.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from covidnet.errors import EvalError
from covidnet.processes import pid_alive
from covidnet.run_files import EVAL_FILES, METRICS_FILE


def check_fresh(dirs: list[Path]) -> None:
    """Refuse result files that exist, except the leftovers of a killed evaluation (see :func:`leftover`)."""
    clash = [str(d / f) for d in dirs if not leftover(d) for f in EVAL_FILES if (d / f).exists()]
    if clash:
        raise EvalError(f"{len(clash)} result file(s) already exist, e.g. {clash[:3]}; covidnet never overwrites results: "
                        "choose another out_dir (or leave it at its default), or pass into_runs=false.")


INCOMPLETE = "INCOMPLETE"  # <result dir>/INCOMPLETE: a process is writing it, or one was killed doing so


def owner_of(mark: Path) -> int | None:
    try:
        return int(json.loads(mark.read_text()).get("pid"))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def leftover(d: Path) -> bool:
    """A result directory an evaluation was killed writing: its INCOMPLETE mark's process is gone and it has no
    metrics.json (written last), so what it holds is not a result and may be replaced."""
    mark = d / INCOMPLETE
    owner = owner_of(mark) if mark.is_file() else None
    return owner is not None and owner != os.getpid() and not pid_alive(owner) and not (d / METRICS_FILE).exists()


def claim(dirs: list[Path], what: str) -> list[Path]:
    """Create each result directory's ``INCOMPLETE`` mark exclusively (``O_EXCL``) before any prediction, so two
    evaluations never write the same results: the second is refused, naming the first. A mark whose process has
    died (a killed evaluation) is taken over, with a note. Each mark is removed once its directory's files are
    written; one that stays says its directory is incomplete."""
    claimed: list[Path] = []
    try:
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
            mark = d / INCOMPLETE
            try:
                fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = owner_of(mark)
                if owner is None or owner == os.getpid() or pid_alive(owner):
                    raise EvalError(f"{d} is being written by another evaluation (process {owner}; {mark}). Wait for it to finish or "
                                    f"choose another out_dir; if no evaluation is running there, remove {mark}.") from None
                print(f"note: {d}: taking over from evaluation process {owner}, which ended before finishing it")
                mark.unlink(missing_ok=True)
                fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                taken = True
            else:
                taken = False
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "what": what}, f)
            claimed.append(mark)
            if not taken:
                check_fresh([d])  # results that a finished evaluation wrote before this one claimed the directory
    except BaseException:
        for mark in claimed:
            mark.unlink(missing_ok=True)
        raise
    return claimed
