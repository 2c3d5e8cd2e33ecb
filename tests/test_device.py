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


@pytest.fixture
def machine(monkeypatch):
    """A machine of ``cores`` CPUs, of which this process may use ``available``, under ``load`` (1-minute average)
    with ``running`` other threads runnable right now."""

    def set_machine(cores: int, available: int, load: float, running: int = 0) -> None:
        monkeypatch.setattr(device_module.os, "cpu_count", lambda: cores)
        monkeypatch.setattr(device_module, "available_cpus", lambda: available)
        monkeypatch.setattr(device_module, "load_average", lambda: load)
        monkeypatch.setattr(device_module, "running_threads", lambda: running)

    before = torch.get_num_threads()
    yield set_machine
    torch.set_num_threads(before)


@pytest.mark.parametrize("cores, available, load, running, expected", [
    (2, 2, 0.1, 0, 2),   # idle: every core
    (2, 2, 1.4, 0, 1),   # one core busy elsewhere (the measured 5x slow-down with two threads)
    (2, 2, 0.2, 1, 1),   # a job started seconds ago: runnable now, not yet in the average
    (2, 2, 1.0, 0, 1),   # a job that ended seconds ago still counts: a thread too few is the cheap mistake
    (2, 2, 6.0, 3, 1),   # overloaded: still one thread
    (8, 4, 0.0, 0, 4),   # taskset / cpuset: at most the CPUs this process may use
    (8, 4, 5.0, 2, 3),   # three idle cores left
    (4, 4, 1.5, 0, 2),   # the load is rounded to the nearest whole core
])
def test_default_threads_is_one_per_idle_core(machine, cores, available, load, running, expected):
    machine(cores, available, load, running)
    assert device_module.default_threads() == expected


def test_threads_given_win_then_the_environment_then_the_default(machine, monkeypatch):
    machine(2, 2, 1.2)
    for name in device_module.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert device_module.set_threads() == 1 and torch.get_num_threads() == 1
    assert device_module.set_threads(2) == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    machine(2, 2, 0.0)
    torch.set_num_threads(2)  # as torch read it from the environment at start-up
    assert device_module.set_threads() == 2 and torch.get_num_threads() == 2
    with pytest.raises(DDLMError, match="--threads must be at least 1, got 0"):
        device_module.set_threads(0)
