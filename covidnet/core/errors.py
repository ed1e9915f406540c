"""The one base class of mistakes a user can fix; entry points show its message alone (``covidnet.apps.cli``).

An option out of range, data that is missing or broken, a checkpoint or weights file that is missing, not
ours or corrupt: the message names the thing and the fix, so a traceback would only hide it. Exceptions of
any other type are bugs and keep their traceback.
"""

from __future__ import annotations

import os

# set to anything but "" or "0": an expected error shows its whole traceback (covidnet.apps.cli, covidnet.apps.hydra_callbacks)
DEBUG_VARS = ("HYDRA_FULL_ERROR", "COVIDNET_DEBUG")


def debugging() -> bool:
    """Whether the user asked for tracebacks of expected errors too (``HYDRA_FULL_ERROR=1``, ``COVIDNET_DEBUG=1``)."""
    return any(os.environ.get(name, "") not in ("", "0") for name in DEBUG_VARS)


class UserError(Exception):
    """Base of every expected error (``ConfigError``, ``DatasetError``, ``CheckpointError``, ``WeightsError``,
    ``VisualizeError``, ``RunDirError``, ...): ``python train.py``/``visualize.py`` print its message and exit 2."""


class ConfigError(UserError, ValueError):
    """An option has a value outside what it allows (the option rules, ``covidnet.core.options``), or a resume would change one."""


class EvalError(UserError, ValueError):
    """An eval set or an evaluation setting cannot be honoured (covidnet.data.sets, covidnet.metrics.set_metrics, evaluate.py);
    the message says which and what to do."""


class ResultFileError(UserError, ValueError):
    """A result file read back (predictions, a report's bundle, metrics) is cut short, edited or damaged: the message
    names the file and the line, and how to get a sound copy. Never read as a smaller or different result."""
