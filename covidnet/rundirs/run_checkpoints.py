"""Which checkpoint stands for a run: the one decision, for visualize.py, evaluate.py and training's ``eval_sets``.

A ``ckpt=`` entry is a .ckpt file (used as given), a run directory (its best checkpoint) or a sweep directory (each
job's best checkpoint, in name order). :func:`run_checkpoint` decides for one run: a trained run stands for its best
checkpoint, found inside the run directory (covidnet.rundirs.runs.RunDir), never through the absolute path recorded in
metrics.json, so a copied sweep reads its own files; an unfinished run is skipped, or on request used through its
last checkpoint and labelled with its state. Resuming (``ckpt_path=last``, covidnet.trained.resume) asks another question,
where training goes on from, and always means ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import ListConfig

from covidnet.core.errors import UserError
from covidnet.rundirs.run_files import CHECKPOINT_DIR, LAST_CHECKPOINT
from covidnet.rundirs.runs import INTERRUPTED, NOT_TRAINED, TRAINED, RunDir, SweepDir

UNFINISHED_HINT = "Pass include_unfinished=true to draw their last checkpoints, labelled as such."


class NoCheckpointError(UserError, ValueError):
    """A ``ckpt=`` entry gives no checkpoint to use; the message says why and what to pass."""


@dataclass
class Chosen:
    """A checkpoint to use: its run directory (when it lies in one) and, for an unfinished run, a label."""

    path: Path
    run: RunDir | None = None
    label: str = ""  # '' for a trained run's best checkpoint or a file passed as such; else e.g. 'interrupted: last.ckpt'


def as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v) for v in value]
    return [str(value)]


def run_checkpoint(run: RunDir, include_unfinished: bool) -> tuple[Chosen | None, str]:
    """A run directory's checkpoint to use, or None and why it is skipped (module docstring)."""
    state = run.state()
    if state == TRAINED:
        best = run.best_checkpoint()
        if best is not None:
            return Chosen(best, run), ""
        return None, f"trained, but the best checkpoint named in its metrics.json is not in {run.checkpoint_dir}"
    why = {NOT_TRAINED: "not trained (its metrics.json records no best checkpoint)",
           INTERRUPTED: "unfinished (no metrics.json: interrupted, failed or still running)"}[state]
    if not include_unfinished:
        return None, why
    last = run.last_checkpoint()
    epochs = sorted(run.checkpoint_dir.glob("*.ckpt"))
    ckpt = last or (epochs[-1] if len(epochs) == 1 else None)
    if ckpt is None:
        return None, f"{why}; include_unfinished=true, but it has no {LAST_CHECKPOINT} (nor a single checkpoint)"
    return Chosen(ckpt, run, f"{'not trained' if state == NOT_TRAINED else 'unfinished'}: {ckpt.name}"), ""


def best_checkpoint(run_dir: str | Path) -> Path:
    """A trained run's best checkpoint, inside its run directory (:func:`run_checkpoint`)."""
    pick, why = run_checkpoint(RunDir(run_dir), include_unfinished=False)
    if pick is None:
        raise NoCheckpointError(f"{run_dir}: {why}.")
    return pick.path


def run_of(checkpoint: str | Path) -> RunDir | None:
    """The finished run a checkpoint file lies in (``<run>/checkpoints/<file>`` with the run's metrics.json); None
    for a file outside a run, or in one that has not finished."""
    checkpoint = Path(checkpoint)
    run = RunDir(checkpoint.parent.parent) if checkpoint.parent.name == CHECKPOINT_DIR else None
    return run if run is not None and run.metrics_path.is_file() else None


def resolve_checkpoints(ckpt: str | Path | Iterable, include_unfinished: bool = False, tool: str = "visualize",
                        hint: str = UNFINISHED_HINT) -> tuple[list[Chosen], list[tuple[Path, str]]]:
    """``ckpt=`` entries -> (checkpoints to use, skipped run directories with the reason). An entry may be
    a .ckpt file, a run directory (its best checkpoint) or a sweep directory (each job's, in name order).
    ``tool`` and ``hint`` word the note on skipped runs for the entry point that asked (evaluate.py has no
    include_unfinished)."""
    entries = as_list(ckpt)
    if not entries:
        raise NoCheckpointError("No checkpoint given: pass ckpt=path/to/file.ckpt or ckpt=[a.ckpt,b.ckpt].")
    chosen: list[Chosen] = []
    skipped: list[tuple[Path, str]] = []
    for entry in entries:
        p = Path(entry).expanduser()
        if not p.is_dir():
            run = RunDir(p.parent.parent) if p.parent.name == CHECKPOINT_DIR else None
            chosen.append(Chosen(p, run if run is not None and run.is_run() else None))  # load_checkpoint says if it is missing or not ours
            continue
        if RunDir(p).is_run():
            runs = [RunDir(p)]
        else:
            found = {r.path for r in SweepDir(p).job_dirs()} | {c.parent for c in p.glob(f"*/{CHECKPOINT_DIR}") if c.is_dir()}
            runs = [RunDir(d) for d in sorted(found)]
            if not runs:
                raise NoCheckpointError(f"{p} is a directory with no run in it or in its subfolders; pass a .ckpt file, a run or a sweep directory.")
        for run in runs:
            pick, why = run_checkpoint(run, include_unfinished)
            if pick is None:
                skipped.append((run.path, why))
            else:
                chosen.append(pick)
    if skipped:
        lines = "\n".join(f"  {path}: {why}" for path, why in skipped)
        hint = "" if include_unfinished else hint
        print(f"{tool}: skipped {len(skipped)} run(s) without a best checkpoint:\n{lines}\n{hint.strip()}".rstrip())
    if not chosen:
        raise NoCheckpointError(f"No checkpoint to draw: every run given was skipped ({'; '.join(f'{p.name}: {w}' for p, w in skipped)}).")
    return chosen, skipped
