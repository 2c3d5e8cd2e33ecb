"""Sampling time with 1 and 2 CPU threads, on the machine as found and beside busy processes.

    python benchmarks/threads.py                          # the issue's command: 160 tokens after "ROMEO:", 128 steps
    python benchmarks/threads.py --steps 16 --repeats 3   # a brief run

For each condition (the machine as found, then with --hogs busy Python processes started
beside this one) and each thread count: the median wall time of one sample over --repeats
runs (thread counts alternate, so a drifting load slows both alike), its ratio to the
fastest count, and the count that ddlm's default (``ddlm.device.default_threads``) picks
under that condition. The machine line gives the load found at the start: "as found" is
idle only where nothing else runs, which the output says.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ddlm import DiffusionPipeline
from ddlm.bundled import DEFAULT_MODEL
from ddlm.device import available_cpus, default_threads, describe_machine, load_average, running_threads


@contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """``count`` processes spinning on one core each, for the duration of the block."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(1.0)  # running before the first measurement
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def timed_sample(pipe: DiffusionPipeline, threads: int, args: argparse.Namespace) -> float:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    pipe.generate(args.prompt, length=args.length, steps=args.steps, seed=args.seed)
    return time.perf_counter() - start


def measure(pipe: DiffusionPipeline, args: argparse.Namespace) -> tuple[dict[int, float], int]:
    """The median seconds per sample of each thread count, and the count the default picks now."""
    picked = default_threads()
    times: dict[int, list[float]] = {threads: [] for threads in args.threads}
    for _ in range(args.repeats):
        for threads in args.threads:
            times[threads].append(timed_sample(pipe, threads, args))
    return {threads: statistics.median(values) for threads, values in times.items()}, picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--length", type=int, default=160)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="runs per thread count and condition (median)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--hogs", type=int, nargs="+", default=[1], help="busy processes of the loaded conditions")
    args = parser.parse_args()

    found_load, found_running = load_average(), running_threads()
    pipe = DiffusionPipeline.from_pretrained(args.model, device="cpu")
    timed_sample(pipe, 1, args)  # warm-up: allocator, first-call overheads
    state = "idle" if found_load < 0.5 and found_running == 0 else "already loaded: other work was running"
    print(f"{args.model} ({pipe.precision}): one sample of {args.length} tokens after {args.prompt!r}, {args.steps} "
          f"steps, median of {args.repeats}; {available_cpus()} CPUs available, this process at nice {os.nice(0)}\n"
          f"machine: {describe_machine()}\nas found: load average {found_load:.2f}, {found_running} other threads "
          f"runnable ({state})\n")
    print("| condition | threads | s / sample | vs fastest | default picks |")
    print("|---|---|---|---|---|")
    conditions = [("as found", 0)] + [(f"+ {count} busy process{'es' if count > 1 else ''}", count) for count in args.hogs]
    for name, hogs in conditions:
        with busy_processes(hogs):
            medians, picked = measure(pipe, args)
        fastest = min(medians.values())
        for threads, seconds in medians.items():
            print(f"| {name} | {threads} | {seconds:.2f} | {seconds / fastest:.2f}x | {picked} |", flush=True)


if __name__ == "__main__":
    main()
