"""A training job as Hydra runs it: where its config record lies, and each multirun job made ready for DDP.

Kept apart from covidnet/apps/train.py because both read Hydra's runtime state (``HydraConfig``) and the distributed
environment, not the training itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write


# The distributed variables as this process started (Lightning's DDP launcher sets them in the launching process).
_LAUNCH_ENV = {name: os.environ.get(name) for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")}


def prepare_multirun_job_for_ddp() -> None:
    """Let each job of a multirun (``-m init=scratch,imagenet trainer=ddp``) use DDP like a single run.

    Lightning starts ranks > 0 as ``sys.argv + hydra.run.dir=<HydraConfig run.dir>``: in a multirun that
    would start the whole sweep again in another directory, so the relaunch gets this job's overrides and
    directory instead. And what the previous job's DDP left in this process is cleared: its process group
    (Lightning would reuse it) and the rank variables Lightning set (with LOCAL_RANK set, Lightning would
    not start the new job's other ranks and wait for them forever).
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for name, value in _LAUNCH_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


def record_dir() -> Path | None:
    """This process's Hydra config record (``.hydra``, or ``.hydra/resume-<time>`` on a resume; covidnet/rundirs/hydra_resolvers.py)."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir if hydra_cfg.output_subdir else None
