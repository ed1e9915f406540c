"""Precision, memory format and threads chosen for the machine a run starts on.

``trainer.precision=auto`` (the default) becomes ``bf16-mixed`` where the hardware computes in bfloat16
natively: a CPU with the AVX-512 BF16 or AMX-BF16 instructions, or a CUDA GPU for which
``torch.cuda.is_bf16_supported()`` holds; ``32-true`` everywhere else (a CPU without them emulates bf16
and runs slower than fp32). ``channels_last=auto`` follows it: channels-last goes with bf16, where it was
measured faster on our CPU (docs/performance.md). Any explicit value wins (``trainer.precision=32-true``
forces fp32, ``channels_last=false`` the default memory format). The choice is printed at start and
stored with the run (metrics.json ``hardware``, the logged hyperparameters).
"""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import asdict, dataclass

import torch

from covidnet.core.errors import ConfigError
from covidnet.core.options import Rule, integer, optional

# CPU instruction sets with native bf16 arithmetic (Linux /proc/cpuinfo flag names)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
AUTO = "auto"
# what Lightning 2.x accepts for Trainer(precision=...), plus auto
PRECISIONS = ("auto", "64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "transformer-engine", "64", "32", "16", "bf16")
# what precision_plugin computes with outside a Trainer (evaluate.py), plus the short names Lightning also accepts
EVAL_PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
_UNIFIED = {"64": "64-true", "32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}

# the speed settings of train.py (covidnet.core.options); resolve() checks with these rules
OPTIONS: dict[str, Rule] = {
    "trainer.precision": Rule("one of " + ", ".join(PRECISIONS), lambda v: str(v) in PRECISIONS,
                              "auto picks the fastest safe one for this machine; e.g. 32-true, bf16-mixed, 16-mixed"),
    "channels_last": Rule("auto, true or false", lambda v: isinstance(v, bool) or v == AUTO),
    "threads": optional(integer(1)).because("torch intra-op threads of this process; null for torch's default"),
}


def accelerators() -> list[str]:
    """The Trainer accelerators this machine can run: cpu and auto always, gpu/cuda only where torch sees a CUDA GPU,
    mps only on Apple silicon. Asked when checked, so the refusal says what this machine has."""
    found = ["auto", "cpu"] + (["gpu", "cuda"] if torch.cuda.is_available() else [])
    return found + (["mps"] if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() else [])


def _devices_ok(v) -> bool:
    """A positive count, -1 (all), auto, a comma-separated string of indices, or a non-empty list of indices."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return v >= 1 or v == -1
    if isinstance(v, str):
        return v == AUTO or v.strip() == "-1" or (bool(v.strip(", ")) and all(p.strip().isdigit() for p in v.strip(", ").split(",")))
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)


# where and on how many devices train.py's Trainer runs (covidnet.core.options): refused before any data is read, not by
# Lightning after the data module and model are built
TRAINER_OPTIONS: dict[str, Rule] = {
    "trainer.accelerator": Rule(lambda: "one of " + ", ".join(accelerators()) + " on this machine",
                                lambda v: isinstance(v, str) and v.lower() in accelerators(),
                                "gpu and cuda need a CUDA GPU that torch can see: torch.cuda.is_available() says whether; "
                                "trainer.accelerator=auto takes one where there is one"),
    "trainer.devices": Rule("a count >= 1, -1 (all), auto, or a list of device indices", _devices_ok,
                            "0 devices would train nothing; e.g. trainer.devices=1"),
}
# evaluate.py's: run = the training run's own
EVAL_PRECISION = Rule("run (the training run's) or one of " + ", ".join(EVAL_PRECISIONS),
                      lambda v: str(v) == "run" or _UNIFIED.get(str(v), str(v)) in EVAL_PRECISIONS)
# where visualize.py and evaluate.py compute
DEVICE = Rule("cpu, cuda, cuda:<index> or auto",
              lambda v: isinstance(v, str) and (v in ("cpu", "cuda", "auto") or (v.startswith("cuda:") and v[5:].isdigit())))


class HardwareConfigError(ConfigError):
    """A speed setting has a value covidnet cannot use; the message names the key and the choices."""


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo does not exist)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    return set()


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    return bool(set(BF16_CPU_FLAGS) & (cpu_flags() if flags is None else flags))


def uses_cuda(accelerator: str) -> bool:
    """Whether a Trainer with this ``accelerator`` trains on a CUDA GPU."""
    accelerator = str(accelerator).lower()
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == AUTO and torch.cuda.is_available()


@dataclass(frozen=True)
class HardwareChoice:
    """What a run uses, and why: stored in metrics.json as ``hardware``."""

    device: str  # "cpu" or "cuda"
    device_name: str
    precision: str
    channels_last: bool
    threads: int  # torch intra-op threads of this process
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"precision={self.precision} channels_last={self.channels_last} threads={self.threads} "
            f"on {self.device} ({self.device_name}): {self.reason}"
        )


def _check(precision, channels_last, threads) -> None:
    for key, value in (("trainer.precision", precision), ("channels_last", channels_last), ("threads", threads)):
        OPTIONS[key].check(key, value, HardwareConfigError)


def resolve(precision="auto", channels_last="auto", accelerator: str = "auto", threads: int | None = None) -> HardwareChoice:
    """The precision, memory format and thread count a run on this machine uses (no side effects)."""
    _check(precision, channels_last, threads)
    cuda = uses_cuda(accelerator)
    name = torch.cuda.get_device_name() if cuda and torch.cuda.is_available() else cpu_name()
    if str(precision) != AUTO:
        precision, reason = str(precision), "trainer.precision set explicitly"
    elif cuda:
        fast = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        precision = "bf16-mixed" if fast else "32-true"
        reason = "auto: the GPU supports bf16" if fast else "auto: the GPU has no bf16 support, fp32"
    elif cpu_has_native_bf16():
        precision, reason = "bf16-mixed", f"auto: the CPU has native bf16 ({', '.join(sorted(set(BF16_CPU_FLAGS) & cpu_flags()))})"
    else:
        precision, reason = "32-true", "auto: the CPU has no native bf16 (avx512_bf16/amx_bf16), fp32"
    if channels_last == AUTO:
        channels_last = precision.startswith("bf16")
        reason += f"; channels-last {'with' if channels_last else 'off without'} bf16"
    else:
        reason += "; channels_last set explicitly"
    return HardwareChoice(
        device="cuda" if cuda else "cpu",
        device_name=name,
        precision=precision,
        channels_last=bool(channels_last),
        threads=threads if threads is not None else torch.get_num_threads(),
        reason=reason,
    )


def apply_threads(threads: int | None) -> None:
    """Set this process's torch intra-op threads (and OpenMP's, for libraries started later)."""
    if threads is None:
        return
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def precision_plugin(precision: str, device: str = "cpu"):
    """Lightning's precision plugin for ``precision`` on ``device``, for predicting outside a Trainer: the same
    autocast or dtype a Trainer with that precision uses (on the CPU ``16-mixed`` becomes ``bf16-mixed``, as
    Lightning's Trainer does), so evaluation computes P(COVID) as training computed its own test predictions."""
    from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision

    name = _UNIFIED.get(str(precision), str(precision))
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    if name == "16-mixed" and kind == "cpu":
        name = "bf16-mixed"
    if name == "32-true":
        return Precision()
    if name in ("16-mixed", "bf16-mixed"):
        return MixedPrecision(name, kind)
    if name in ("16-true", "bf16-true"):
        return HalfPrecision(name)
    if name == "64-true":
        return DoublePrecision()
    raise HardwareConfigError(f"precision={precision!r} cannot be used for evaluation; choose one of {', '.join(EVAL_PRECISIONS)}.")
