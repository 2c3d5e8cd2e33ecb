"""Device choice and mixed precision, shared by training, sampling and benchmarks."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import platform

import torch

from ddlm.errors import DDLMError

PRECISIONS = ("auto", "fp32", "bf16")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # torch reads its thread count from these
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


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (``taskset``, cgroup cpusets), else every CPU."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def load_average() -> float:
    """The 1-minute load average: how many threads ran or waited to run, on average (0 where unknown)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows; a system without one
        return 0.0


def running_threads() -> int:
    """The threads runnable at this moment besides the caller's (Linux's /proc/loadavg; 0 elsewhere)."""
    try:
        with open("/proc/loadavg") as handle:
            return int(handle.read().split()[3].split("/")[0]) - 1
    except (OSError, IndexError, ValueError):
        return 0


def default_threads() -> int:
    """One thread per idle core, at most the available CPUs, at least 1.

    Idle cores are the machine's CPUs less the busy ones: the 1-minute load average rounded to
    whole cores, or the threads runnable right now where those are more (the average takes a
    minute to see a job that has just started). Torch's threads wait for each other at every
    operation, so one thread per core on cores that other work keeps busy made sampling 5x
    slower than a single thread; a thread too few costs at most the idle core it leaves.
    """
    busy = max(math.floor(load_average() + 0.5), running_threads())
    return max(1, min(available_cpus(), (os.cpu_count() or 1) - busy))


def set_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads for a command and return the count: ``threads`` (``--threads``) when given,
    else what an OMP_NUM_THREADS or MKL_NUM_THREADS in the environment made it, else :func:`default_threads`.
    """
    if threads is None and any(os.environ.get(name) for name in THREAD_VARIABLES):
        return torch.get_num_threads()
    if threads is not None and threads < 1:
        raise DDLMError(f"--threads must be at least 1, got {threads}")
    threads = default_threads() if threads is None else threads
    torch.set_num_threads(threads)
    return threads


def describe_machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores ({available_cpus()} available, load {load_average():.2f}), "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads{gpu}, Python {platform.python_version()}")
