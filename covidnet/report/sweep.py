"""Reading a sweep for the report: every job directory (through covidnet.rundirs.runs) and every job that
``multirun.yaml`` expects, grouped by the factors that were swept."""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from covidnet.metrics import stats
from covidnet.core.errors import UserError
from covidnet.models.inits import resolve_saved_config
from covidnet.rundirs.run_files import EVAL_DIR, incomplete_results
from covidnet.rundirs.runs import FAILED, NOT_TRAINED, RunDir, SweepDir, not_job_keys, override_key

REFERENCE_INIT = "scratch"
# Keys that never name a factor of the comparison: the replicate key, and those that do not name a job
# (covidnet.rundirs.runs.not_job_keys: Hydra's override_dirname.exclude_keys in conf/hydra/default.yaml).
REPLICATE_KEY = "seed"
NOT_FACTORS = {REPLICATE_KEY, *not_job_keys()}


class ReportError(UserError, ValueError):
    """The directory is not a sweep the report can read; the message says what was expected."""


@dataclass
class Run:
    """One job directory of a sweep (or one expected job that never started: ``path`` is None)."""

    name: str
    path: Path | None
    overrides: dict[str, str]
    status: str  # complete | no test predictions | not trained | failed | incomplete | not started | unreadable
    message: str = ""
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    predictions: dict[tuple[str, int], float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)  # the swept keys' values, filled by load_sweep
    points: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, stats.Interval] = field(default_factory=dict)
    # {set: (metrics.json, prediction rows)}: read from the run directory on first use, or given (a report rebuilt from its predictions)
    evals: dict[str, tuple[dict, list[dict]]] | None = None
    curves: dict[str, list[tuple[int, float]]] | None = None  # likewise: validation curves per tag, else read from TensorBoard
    incomplete: list[str] | None = None  # likewise: external sets whose evaluation was interrupted, else read from eval/

    @property
    def ok(self) -> bool:
        return self.status == "complete"

    @property
    def run_dir(self) -> RunDir | None:
        """The job's files (``eval_sets()``, ``read_eval()``, checkpoints), None for a job never started."""
        return RunDir(self.path) if self.path is not None else None

    def eval_results(self) -> dict[str, tuple[dict, list[dict]]]:
        """The run's external-set evaluations, ``{set: (metrics.json, prediction rows)}`` (covidnet.trained.external_summary)."""
        if self.evals is not None:
            return self.evals
        rd = self.run_dir
        try:
            # read (and checked) once: the external section, the ensembles and report.json all ask
            self.evals = {} if rd is None else {name: rd.read_eval(name) for name in rd.eval_sets()}
            return self.evals
        except ValueError as err:  # a result file cut short or damaged: one line naming it, never a smaller result
            raise ReportError(f"job {self.name}: {err}") from err

    def eval_names(self) -> set[str]:
        """The external sets this run has a complete evaluation of (names only: nothing is read)."""
        if self.evals is not None:
            return set(self.evals)
        return set(self.run_dir.eval_sets()) if self.run_dir is not None else set()

    def incomplete_evals(self) -> list[str]:
        """External sets whose evaluation of this run was interrupted (an ``eval/<set>/`` without metrics.json)."""
        if self.incomplete is not None or self.path is None:
            return list(self.incomplete or [])
        return incomplete_results(self.path / EVAL_DIR)

    @property
    def seed(self) -> str:
        return str(self.metrics.get("seed", self.overrides.get("seed", self.config.get("seed", "?"))))

    @property
    def init(self) -> str:
        return str(self.overrides.get("init") or self.metrics.get("init") or dig(self.config, "model.init") or "?")


@dataclass
class Sweep:
    path: Path
    command: str
    runs: list[Run]  # every job directory and every expected job that never started
    factors: list[str]  # swept keys other than seed: what a summary row stands for (init first)
    # the level each factor is compared against: scratch for init; for any other factor the value of the
    # sweep's first job as multirun.yaml lists it (the first value typed, e.g. full in data.field=full,lung_crop)
    references: dict[str, str] = field(default_factory=dict)
    # the argument of `python -m covidnet.report` that rebuilds the report (default: the sweep directory)
    source: str = ""
    name: str = ""  # what the report is titled (default: the sweep directory's name)
    # every launch's command, oldest first (a second `-m` into the same sweep directory adds one); ``command``: the last
    commands: list[str] = field(default_factory=list)

    @property
    def complete(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    @property
    def problems(self) -> list[Run]:
        return [r for r in self.runs if not r.ok]


def dig(tree: dict, dotted: str, default=None):
    """``tree['a']['b']`` for ``'a.b'``; ``default`` when any level is missing."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """Hydra override strings -> {key: value as written} (Hydra's own parser, so quoting is handled)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(x) for x in lines])
    return {o.get_key_element().lstrip("+~"): o.get_value_element_as_str() for o in parsed}


def read_predictions(rd: RunDir, metrics: dict) -> dict[tuple[str, int], float]:
    """The run's test predictions (RunDir.read_predictions, checked against the count ``metrics`` records)."""
    try:
        return rd.read_predictions(metrics)
    except ValueError as err:
        raise ReportError(str(err)) from err


def read_job(job_dir: Path, sweep_dir: Path, failures: dict[str, str]) -> Run:
    """Everything the report needs from one job directory; a job without results gets a status, not an error.

    ``failures`` maps resolved job directories to the error a failed job raised (``SweepDir.failures``)."""
    rd = RunDir(job_dir)
    name = str(job_dir.relative_to(sweep_dir)) if job_dir != sweep_dir else job_dir.name
    overrides = parse_overrides(rd.overrides())
    run = Run(name=name, path=job_dir, overrides=overrides, status="complete", config=resolve_saved_config(rd.config()))
    recorded = SweepDir.failure_of(rd, failures)
    try:
        metrics = rd.read_metrics()
    except (OSError, ValueError) as err:
        run.status, run.message = "unreadable", f"{type(err).__name__}: {err}"
        return run
    state = rd.state(failed=bool(recorded))
    if metrics is not None:
        run.metrics = metrics
        if state == NOT_TRAINED:
            run.status = "not trained"
            run.message = "metrics.json records no best checkpoint (nothing trained or validated, e.g. trainer.max_epochs=0): no test result"
            return run
        try:
            run.predictions = read_predictions(rd, metrics)
        except (OSError, ValueError, KeyError) as err:  # ReportError is a ValueError
            run.status, run.message = "unreadable", f"{type(err).__name__}: {err}"
            return run
        if not run.predictions and rd.predictions_path.is_file():
            run.status, run.message = "unreadable", f"{rd.predictions_path.name} holds no predictions"
        elif not rd.predictions_path.is_file():
            run.status, run.message = "no test predictions", "metrics.json but no predictions_test.csv (trained with test=false?)"
    elif state == FAILED:
        run.status, run.message = "failed", recorded
    else:
        run.status = "incomplete"
        run.message = "no metrics.json: the job failed, was interrupted, or is still running"
        if rd.last_checkpoint() is not None:
            args = " ".join(f"{k}={v}" for k, v in overrides.items() if k != "ckpt_path")  # said once, below
            run.message += f"; resume with `python train.py {args} ckpt_path=last hydra.run.dir='{job_dir}'`"
    return run


def expand_sweep(arguments: list[str]) -> tuple[list[list[str]], set[str]]:
    """Hydra override strings of a multirun -> (each job's ``key=value`` strings, the swept keys).

    The cartesian product of every sweep override's values, in the order given, as Hydra's basic sweeper
    forms its jobs (public override parser only)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(arguments)
    choices: dict[str, list[str]] = {}  # a later override of a key replaces an earlier one, as in Hydra
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override() and o.is_discrete_sweep():
            choices[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={o.get_value_element_as_str()}"]
    swept = {o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()}
    return ([list(job) for job in itertools.product(*choices.values())] if choices else []), swept


def sweep_definition(sweep_dir: Path) -> tuple[list[str], list[list[str]], set[str], set[str]]:
    """From every launch's ``multirun.yaml`` (covidnet.rundirs.runs.SweepDir.launch_configs): (each launch's command, every
    job's override strings, swept keys, exclude keys); the jobs of all launches, in launch order."""
    commands, jobs, swept, exclude = [], [], set(), set()
    for cfg in SweepDir(sweep_dir).launch_configs():
        task = [str(x) for x in dig(cfg, "hydra.overrides.task", []) or []]
        params = dig(cfg, "hydra.sweeper.params") or {}
        launch_jobs, launch_swept = expand_sweep([f"{k}={v}" for k, v in params.items()] + task)
        jobs += [job for job in launch_jobs if job not in jobs]
        swept |= launch_swept
        exclude |= set(dig(cfg, "hydra.job.config.override_dirname.exclude_keys", []) or [])
        commands.append("python train.py -m " + " ".join(task) if task else "")
    return commands, jobs, swept, exclude


def job_identity(overrides: dict[str, str], ignore: set[str]) -> tuple:
    return tuple(sorted((k, v) for k, v in overrides.items() if k not in ignore))


def load_sweep(sweep_dir: str | Path, failures: dict[str, str] | None = None) -> Sweep:
    """All jobs of a sweep. Errors of failed jobs come from ``<sweep dir>/failed_jobs.jsonl`` and from
    ``failures`` (job directory -> message, for a caller that saw a job fail)."""
    sweep_dir = Path(sweep_dir).expanduser().resolve()
    if not sweep_dir.is_dir():
        raise ReportError(f"Sweep directory not found: {sweep_dir}. Pass the directory Hydra printed, e.g. logs/train/multiruns/<stamp>.")
    commands, expected, swept, exclude = sweep_definition(sweep_dir)
    failures = {**SweepDir(sweep_dir).failures(), **(failures or {})}
    runs = [read_job(rd.path, sweep_dir, failures) for rd in SweepDir(sweep_dir).job_dirs()]
    if not runs and not expected:
        raise ReportError(
            f"{sweep_dir} holds no job directories (none with .hydra/ or metrics.json) and no multirun.yaml. "
            "Pass a sweep directory written by `python train.py -m ...`."
        )
    ignore = exclude | (NOT_FACTORS - {REPLICATE_KEY})
    present = {job_identity(r.overrides, ignore) for r in runs}
    for lines in expected:
        job = parse_overrides(lines)
        if job_identity(job, ignore) not in present:
            # named as Hydra names a job directory (hydra.job.override_dirname)
            name = ",".join(sorted(line for line in lines if override_key(line) not in exclude))
            runs.append(Run(name=name, path=None, overrides=job, status="not started", message="expected by multirun.yaml; no job directory"))

    # a factor is a key swept in multirun.yaml or taking different values across jobs
    values: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        for k, v in r.overrides.items():
            values[k].add(v)
    keys_in_all = set.intersection(*(set(r.overrides) for r in runs)) if runs else set()
    varying = {k for k, v in values.items() if len(v) > 1 or k not in keys_in_all}
    factors = sorted((swept | varying) - exclude - NOT_FACTORS - {"init"}, key=lambda k: (k != "model.arch", k))
    factors = ["init"] + factors
    for r in runs:
        r.params = {"init": r.init} | {k: r.overrides.get(k, str(dig(r.config, k, "default"))) for k in factors[1:]}
    first = parse_overrides(expected[0]) if expected else {}
    references = {"init": REFERENCE_INIT} | {k: first[k] for k in factors[1:] if k in first}
    return Sweep(sweep_dir, commands[-1] if commands else "", runs, factors, references, commands=[c for c in commands if c])
