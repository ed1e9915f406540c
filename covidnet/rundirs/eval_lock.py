"""Which process writes an evaluation result directory, and what a killed one left behind.

An evaluation result (covidnet.rundirs.run_files.write_eval: ``<out_dir>/<model>/<set>/`` or ``<run>/eval/<set>/``) is
never overwritten, and two evaluations never write the same one: before any prediction each directory gets an
``INCOMPLETE`` mark naming its process, and the process holds an OS file lock on that mark (the ``filelock``
package, as covidnet.rundirs.run_lock does for run directories) until the directory's files are written. The mark is then
removed, so one that stays says the directory is incomplete. The lock, not the process id in the mark, says whether
its evaluation still runs: the kernel (or the file server, on a shared filesystem) frees it when the process ends,
however it ends, while a process id means nothing on another node. A mark nobody locks is what a killed evaluation
left; it is taken over, and what that process left is not a result and may be replaced.

A result is complete when its metrics.json (written last) exists: a directory without one was interrupted and is
redone by the next evaluation, and one that holds what the same command would write (:func:`same_result`) is kept,
so rerunning an interrupted command finishes what is missing.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

from covidnet.core.errors import EvalError
from covidnet.rundirs.run_files import EVAL_DIR, METRICS_FILE, read_metrics


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


INCOMPLETE = "INCOMPLETE"  # <result dir>/INCOMPLETE: a process is writing it (and locks it), or one was killed doing so
_held: dict[Path, FileLock] = {}  # the marks this process locks, until release()


def record(what: str, **more) -> dict:
    """What a mark says about the process that writes it (read back to name it to a refused one)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "what": what, **more}


def read_mark(mark: Path) -> dict:
    """A mark's record; empty when it holds nothing readable (written by hand, or its writer was killed mid-write)."""
    try:
        found = json.loads(mark.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def owner_of(mark: Path) -> int | None:
    try:
        return int(read_mark(mark).get("pid"))
    except (ValueError, TypeError):
        return None


def lock_mark(mark: Path, content: dict) -> dict | None:
    """Lock ``mark`` for this process (created if absent) and write ``content`` into it; returns what the mark said
    before (empty if it was new or unreadable), or None when another process holds its lock."""
    lock = FileLock(mark)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    before = read_mark(mark)
    with open(mark, "w") as f:  # in place: the lock is on this file, a replaced one would not be locked
        json.dump(content, f)
    _held[mark] = lock
    return before


def release(mark: Path) -> None:
    """Remove a mark this process locks, then free its lock (a mark whose directory is written, or left unwritten
    by an error rather than a kill)."""
    mark.unlink(missing_ok=True)
    lock = _held.pop(mark, None)
    if lock is not None:
        lock.release(force=True)


def unlocked_marks(pattern: str, folder: Path) -> list[tuple[Path, dict]]:
    """The marks in ``folder`` matching ``pattern`` that no process locks (left by killed processes), with their
    records. Each is locked by this process on return: :func:`release` it, or :func:`let_go` of it."""
    found = []
    for mark in sorted(folder.glob(pattern)):
        if mark in _held:
            continue
        lock = FileLock(mark)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        _held[mark] = lock
        found.append((mark, read_mark(mark)))
    return found


def let_go(mark: Path) -> None:
    """Free this process's lock on a mark and leave the mark in place."""
    lock = _held.pop(mark, None)
    if lock is not None:
        lock.release(force=True)


def refusal(d: Path, mark: Path) -> EvalError:
    who = read_mark(mark)
    host = f" on {who['host']}" if who.get("host") else ""
    return EvalError(f"{d} is being written by another evaluation (process {who.get('pid', '?')}{host}; {mark}). Wait for it to "
                     "finish or choose another out_dir; its lock is freed when that process ends, however it ends.")


def claim(dirs: list[Path], what: str) -> list[Path]:
    """Lock each result directory's ``INCOMPLETE`` mark before any prediction, so two evaluations never write the
    same results: the second is refused, naming the first. A mark nobody locks (a killed evaluation's) is taken
    over, with a note. Each mark is removed and its lock freed once its directory's files are written
    (:func:`release`); one that stays says its directory is incomplete."""
    claimed: list[Path] = []
    try:
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
            mark = d / INCOMPLETE
            existed = mark.exists()
            before = None if mark in _held else lock_mark(mark, record(what))
            if before is None:
                raise refusal(d, mark)
            claimed.append(mark)
            if existed:
                print(f"note: {d}: taking over from evaluation process {before.get('pid', '?')}, which ended before finishing it")
            check_fresh([d])  # results that a finished evaluation wrote before this one claimed the directory
    except BaseException:
        for mark in claimed:
            release(mark)
        raise
    return claimed


def call_mark(out: Path, pairs: list[str]) -> Path:
    """An evaluate.py call's mark on the whole out_dir, ``INCOMPLETE.<host>.<pid>.json``, locked while the call runs
    and removed when it finishes: one that stays (with the pairs it meant to write) says the call was killed or
    failed, its pairs without metrics.json are missing and summary.csv lacks its rows."""
    mark = out / f"{INCOMPLETE}.{socket.gethostname()}.{os.getpid()}.json"
    lock_mark(mark, record("evaluate.py", pairs=pairs, note="an evaluate.py call that has not finished (or was killed): "
                           "its pairs without metrics.json are missing, and summary.csv lacks its rows"))
    return mark


def remove_finished_calls(out: Path) -> None:
    """Remove the marks of killed calls (nobody locks them) once every pair they meant to write is written."""
    for mark, said in unlocked_marks(f"{INCOMPLETE}.*.json", out):
        pairs = said.get("pairs")
        if isinstance(pairs, list) and all((out / p / METRICS_FILE).is_file() for p in pairs):
            release(mark)
        else:
            let_go(mark)
