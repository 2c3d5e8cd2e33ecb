"""Device choice and mixed precision, shared by training, sampling and benchmarks."""

from __future__ import annotations

import contextlib
import functools
import os
import platform

import torch

from ddlm.errors import DDLMError

PRECISIONS = ("auto", "fp32", "bf16")
# CPU flags of native bf16 matrix instructions (x86: AVX512-BF16, AMX; Arm: the bf16 extension).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DDLMError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise DDLMError(f"unknown device {name!r}; use auto, cpu or cuda") from None


def cpu_flags() -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as handle:
            line = next(line for line in handle if line.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        return set()
    return set(line.split(":", 1)[1].split())


@functools.cache
def has_fast_bf16(device_type: str) -> bool:
    """Whether bf16 matrix products run natively (faster than fp32) on this kind of device.

    Without native instructions (e.g. AMD Zen 3, Intel before Cooper Lake) PyTorch emulates
    bf16 on the CPU, which is far slower than fp32.
    """
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device_type == "cpu" and not cpu_flags().isdisjoint(BF16_CPU_FLAGS)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 where the device multiplies bf16 natively, else fp32."""
    if precision not in PRECISIONS:
        raise DDLMError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if has_fast_bf16(device.type) else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast (fp32 master weights) or a no-op for fp32; ``auto`` as in resolve_precision."""
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def describe_machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"
            f"{gpu}, Python {platform.python_version()}")
