"""Precision choice: bf16 only where the device multiplies it natively."""

from __future__ import annotations

import pytest
import torch

from ddlm import device as device_module
from ddlm.device import autocast, resolve_precision
from ddlm.errors import DDLMError

CPU = torch.device("cpu")


@pytest.fixture
def cpu_with_flags(monkeypatch):
    def set_flags(*flags: str) -> None:
        monkeypatch.setattr(device_module, "cpu_flags", lambda: {"fpu", "avx2", *flags})
        device_module.has_fast_bf16.cache_clear()

    yield set_flags
    device_module.has_fast_bf16.cache_clear()


@pytest.mark.parametrize("flags, expected", [
    ((), "fp32"),                      # e.g. AMD Zen 3: bf16 would be emulated
    (("avx512f", "avx512bw"), "fp32"),  # AVX-512 without its bf16 extension
    (("avx512_bf16",), "bf16"),
    (("amx_bf16", "amx_tile"), "bf16"),
    (("bf16",), "bf16"),               # Arm's bf16 extension
])
def test_auto_precision_follows_the_cpu_flags(cpu_with_flags, flags, expected):
    cpu_with_flags(*flags)
    assert resolve_precision("auto", CPU) == expected
    assert isinstance(autocast(CPU, "auto"), torch.autocast) == (expected == "bf16")


def test_explicit_precisions_are_kept_whatever_the_cpu(cpu_with_flags):
    cpu_with_flags()
    assert resolve_precision("bf16", CPU) == "bf16" and resolve_precision("fp32", CPU) == "fp32"


def test_an_unknown_precision_names_the_choices():
    with pytest.raises(DDLMError, match="auto, fp32, bf16"):
        resolve_precision("fp16", CPU)
