"""How every command-line app of covidnet starts: one ``main`` per app, wired to Hydra the same way, with
expected errors shown as one message.

Each app module (covidnet.apps.train, covidnet.apps.evaluate, covidnet.apps.visualize) defines its ``main`` once with
:func:`hydra_app`; the checkout's scripts (``python train.py``, ``evaluate.py``, ``visualize.py``) and the
installed console scripts (``covidnet-train``, ``covidnet-evaluate``, ``covidnet-visualize``, pyproject.toml)
both call that ``main``, so they cannot drift apart. Hydra gets the configs' absolute path
(:func:`covidnet.core.configs.config_dir`: ``conf/`` of a checkout, ``covidnet/conf`` of an installed package), so
neither needs to know which of the two it runs from; the job name Hydra records stays the app's (``train``, ...).
The resolvers Hydra's own config uses (covidnet.rundirs.hydra_resolvers) are registered by ``main`` before Hydra starts.

A ``UserError`` (a bad option, bad data, a bad checkpoint or weights file, a used run directory) is the
user's to fix and its message says how, so it is printed alone on stderr and the process exits with status
2, without Lightning's or Hydra's traceback. ``HYDRA_FULL_ERROR=1`` (or ``COVIDNET_DEBUG=1``) re-raises it
with the whole traceback. In a multirun the expected error is re-raised alone (without the traceback and the chain
of wrappers that led to it): Hydra records the job as failed, the other jobs still run,
``covidnet.apps.hydra_callbacks.SweepReport`` names it, and what Hydra prints at the end stays short. Any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from covidnet.core.configs import config_dir
from covidnet.core.errors import DEBUG_VARS, UserError, debugging
from covidnet.rundirs.hydra_resolvers import register_resolvers

EXIT_USER_ERROR = 2


def find_user_error(err: BaseException) -> UserError | None:
    """``err`` or the first ``UserError`` it was raised from (Hydra's instantiate wraps what a constructor raised)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextlib.contextmanager
def user_errors():
    """Run the body; turn an expected error into its message on stderr and exit status 2."""
    try:
        yield
    except Exception as err:
        user = find_user_error(err)
        if user is None or debugging():
            raise
        if _in_multirun():
            # Hydra records the job as failed and, at the end, prints the first failure's traceback: the expected
            # error alone (no Lightning/Hydra frames, no chain of wrappers) keeps that to its message
            # (a copy: re-raising the object in flight would keep its traceback)
            try:
                alone = copy.copy(user)
            except Exception:  # noqa: BLE001 - an error class that cannot be copied keeps its traceback
                raise user from None
            raise alone.with_traceback(None) from None
        message = f"Error: {user}"
        # into the run's log file too (Hydra's file handler), so the run directory says why it stopped
        record = logging.LogRecord("covidnet", logging.ERROR, __file__, 0, message, None, None)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        print(message, file=sys.stderr)
        print(f"({DEBUG_VARS[0]}=1 shows the traceback.)", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None


def hydra_app(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[..., Any]]:
    """Decorator for an app's ``main(cfg)``: Hydra's command line over ``<config_dir>/<config_name>.yaml``
    (overrides, ``-m``, ``--cfg job``, output directories), the body run under :func:`user_errors`, the
    resolvers of conf/hydra registered first.

    ``main()`` parses ``sys.argv``; ``main(cfg)`` runs the body on a composed config and returns its value
    (Hydra's passthrough), which is how a test calls an entry point without a command line."""

    def decorate(body: Callable[[DictConfig], Any]) -> Callable[..., Any]:
        @functools.wraps(body)  # Hydra names the job after the body's module (covidnet.apps.train -> train)
        def guarded(cfg: DictConfig) -> Any:
            with user_errors():  # a bad option, data, set or checkpoint: its message alone, exit status 2
                return body(cfg)

        # absolute: Hydra then needs no package import to find the configs, from a checkout or a wheel
        hydra_main = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)(guarded)

        @functools.wraps(body)
        def main(cfg_passthrough: DictConfig | None = None) -> Any:
            register_resolvers()  # before Hydra resolves hydra.output_subdir and hydra.sweep.subdir
            return hydra_main(cfg_passthrough)

        return main

    return decorate
