"""The OmegaConf resolvers conf/hydra/default.yaml uses, registered by one explicit call: :func:`register_resolvers`.

Why a call and not an import: a resolver registered as a side effect of importing some module works only while
that import happens to come first, and moving the import silently breaks Hydra's output folders. Every app's
``main`` (covidnet.apps.cli.hydra_app) calls :func:`register_resolvers` before Hydra composes its config; a reader of
saved configs that resolves Hydra's own keys calls it too (the saved job configs, ``.hydra/config.yaml``, hold
none of these keys).

**The record.** Hydra writes ``<run dir>/.hydra/{config,hydra,overrides}.yaml`` when a job starts, also when
it is resumed, which would replace how the run started by how it was resumed. ``conf/hydra/default.yaml``
therefore sets ``hydra.output_subdir: ${covidnet_record:${hydra.runtime.output_dir}}``: ``.hydra`` in a new
run directory, ``.hydra/resume-<UTC time>`` in one that already has a record. ``.hydra/config.yaml`` always
describes the original run, and each resume's config and overrides lie beside it (covidnet.trained.resume).

**A job's folder** in a sweep is its ``override_dirname`` with ``/`` written as ``.``
(``hydra.sweep.subdir: ${covidnet_job_dir:${hydra.job.override_dirname}}``): a config-group override such as
``data/source_aug=default`` would otherwise nest the job one folder deeper (covidnet.rundirs.runs.SweepDir walks
down to it, but globs like ``<sweep>/*/metrics.json`` and a reader's eye look one level deep).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf

from covidnet.rundirs.run_files import HYDRA_DIR

RECORD_RESOLVER = "covidnet_record"
JOB_DIR_RESOLVER = "covidnet_job_dir"
_chosen: dict[str, str] = {}


def record_subdir(output_dir: str) -> str:
    """``.hydra`` for a new run directory, ``.hydra/resume-<UTC time>`` when it already holds a record.

    Chosen once per directory and process: Hydra resolves ``output_subdir`` more than once, and the answer
    must not change after it has written the record."""
    key = str(Path(output_dir).expanduser().absolute())
    if key not in _chosen:
        if (Path(key) / HYDRA_DIR / "config.yaml").is_file():
            _chosen[key] = f"{HYDRA_DIR}/resume-{datetime.now(timezone.utc).strftime('%Y-%m-%d_%H-%M-%S-%f')}"
        else:
            _chosen[key] = HYDRA_DIR
    return _chosen[key]


def job_dir_name(override_dirname: str) -> str:
    """A sweep job's folder name: its override_dirname, one path component (``data/source_aug=x`` -> ``data.source_aug=x``)."""
    return str(override_dirname).replace("/", ".")


RESOLVERS = {RECORD_RESOLVER: record_subdir, JOB_DIR_RESOLVER: job_dir_name}


def register_resolvers() -> None:
    """Register every resolver of :data:`RESOLVERS` with OmegaConf (a second call changes nothing)."""
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
