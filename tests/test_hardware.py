"""trainer.precision=auto, channels_last and threads: resolved for the hardware, explicit values win, recorded."""

from __future__ import annotations

import pytest
import torch

from covidnet.core import hardware
from covidnet.core.hardware import HardwareConfigError, resolve
from covidnet.models.model import CovidClassifier


@pytest.fixture
def cpu(monkeypatch):
    """A machine without CUDA whose CPU reports the given flags."""

    def make(*flags: str):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: {"fpu", "sse2", "avx2", *flags})
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    return make


@pytest.fixture
def gpu(monkeypatch):
    """A machine with a CUDA GPU that does or does not support bf16 (and a CPU with native bf16)."""

    def make(bf16: bool):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Fake GPU")

    return make


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_auto_is_bf16_and_channels_last_on_a_cpu_with_native_bf16(cpu, flag):
    cpu("avx512f", flag)
    choice = resolve("auto", "auto", "auto")
    assert (choice.device, choice.precision, choice.channels_last) == ("cpu", "bf16-mixed", True)
    assert flag in choice.reason


def test_auto_is_fp32_without_channels_last_on_a_cpu_without_native_bf16(cpu):
    cpu("avx512f", "avx512bw")  # AVX-512 alone: bf16 would be emulated, slower than fp32
    choice = resolve("auto", "auto", "cpu")
    assert (choice.precision, choice.channels_last) == ("32-true", False)
    assert "no native bf16" in choice.reason


@pytest.mark.parametrize("bf16, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_on_a_gpu_follows_its_bf16_support(gpu, bf16, expected):
    gpu(bf16)
    for accelerator in ("auto", "gpu", "cuda"):
        choice = resolve("auto", "auto", accelerator)
        assert (choice.device, choice.device_name, choice.precision) == ("cuda", "Fake GPU", expected)
        assert choice.channels_last is bf16


def test_accelerator_cpu_on_a_gpu_machine_decides_by_the_cpu(gpu, monkeypatch):
    gpu(False)
    choice = resolve("auto", "auto", "cpu")
    assert (choice.device, choice.precision) == ("cpu", "bf16-mixed")  # the CPU has avx512_bf16, the GPU is not used


@pytest.mark.parametrize("explicit", ["32-true", "16-mixed", "bf16-mixed", 32])
def test_an_explicit_precision_wins(cpu, gpu, explicit):
    for machine in (lambda: cpu("avx512_bf16"), lambda: cpu(), lambda: gpu(True)):
        machine()
        choice = resolve(explicit, "auto", "auto")
        assert choice.precision == str(explicit) and "explicitly" in choice.reason


def test_an_explicit_channels_last_wins(cpu):
    cpu("avx512_bf16")
    assert resolve("auto", False).channels_last is False
    assert resolve("32-true", True).channels_last is True
    assert resolve("32-true", "auto").channels_last is False


@pytest.mark.parametrize("key, value", [("precision", "fp32"), ("precision", "bf16-auto"), ("channels_last", "yes"), ("threads", 0), ("threads", "2"), ("threads", True)])
def test_bad_values_are_refused_by_name(key, value):
    kwargs = {"precision": "auto", "channels_last": "auto", "threads": None, key: value}
    with pytest.raises(HardwareConfigError, match=key):
        resolve(**kwargs)


def test_threads_are_recorded_as_set_or_as_torch_has_them(cpu):
    cpu()
    assert resolve(threads=3).threads == 3
    assert resolve().threads == torch.get_num_threads()


def test_channels_last_model_gives_the_same_logits():
    torch.manual_seed(0)
    model = CovidClassifier().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        model.set_channels_last(True)
        assert model.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        last = model(x)
        model.set_channels_last(False)
        assert model.net.conv1.weight.is_contiguous()
    torch.testing.assert_close(last, plain, rtol=1e-4, atol=1e-5)
