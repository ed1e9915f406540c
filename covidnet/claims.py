"""Which process writes an evaluation result directory, and what a killed one left behind.

An evaluation result (covidnet.run_files.write_eval: ``<out_dir>/<model>/<set>/`` or ``<run>/eval/<set>/``) is
never overwritten, and two evaluations never write the same one: before any prediction each directory gets an
``INCOMPLETE`` mark, created exclusively (``O_EXCL``) and naming its process. The mark is removed once the
directory's files are written, so one that stays says the directory is incomplete; a mark whose process has died
(a killed evaluation) is taken over, and what that process left is not a result and may be replaced.

A result is complete when its metrics.json (written last) exists: a directory without one was interrupted and is
redone by the next evaluation, and one that holds what the same command would write (:func:`same_result`) is kept,
so rerunning an interrupted command finishes what is missing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from covidnet.errors import EvalError
from covidnet.processes import pid_alive
from covidnet.run_files import EVAL_DIR, METRICS_FILE, read_metrics


def check_fresh(dirs: list[Path]) -> None:
    """Refuse complete results (a metrics.json, written last) that exist. A directory without one is an evaluation
    that was interrupted (killed, Ctrl-C, an error): not a result, so it is redone."""
    clash = [str(d / METRICS_FILE) for d in dirs if (d / METRICS_FILE).exists()]
    if clash:
        in_runs = any(Path(c).parent.parent.name == EVAL_DIR for c in clash)
        raise EvalError(f"{len(clash)} result(s) of another evaluation already exist, e.g. {clash[:3]}; covidnet never overwrites "
                        "results: choose another out_dir (or leave it at its default)" + (", or pass into_runs=false." if in_runs else "."))


def _plain(value) -> object:
    return json.loads(json.dumps(value, default=str))


def same_result(d: Path, checkpoint: str | Path, definition: dict, how: dict) -> bool:
    """Whether ``d`` holds a complete evaluation of this checkpoint on this set definition, computed the same way
    (``how``: the precision and memory format of the probabilities, the bootstrap's resamples and seed): what a rerun
    of the same command would write, so it is kept rather than refused or redone. Results written before the
    bootstrap was recorded are taken as made with the one asked for."""
    try:
        metrics = read_metrics(d / METRICS_FILE)
    except ValueError:
        return False
    if metrics is None or metrics.get("checkpoint") != str(checkpoint) or _plain(metrics.get("set_definition")) != _plain(definition):
        return False
    scored = metrics.get("precision") or {}
    return (all(scored.get(k) == how.get(k) for k in ("precision", "channels_last"))
            and metrics.get("bootstrap", how["bootstrap"]) == how["bootstrap"])


INCOMPLETE = "INCOMPLETE"  # <result dir>/INCOMPLETE: a process is writing it, or one was killed doing so


def owner_of(mark: Path) -> int | None:
    try:
        return int(json.loads(mark.read_text()).get("pid"))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


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
