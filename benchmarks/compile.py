"""torch.compile for sampling: compile time against the steady-state gain, measured side by side.

    python benchmarks/compile.py                      # the bundled model, bf16 where native
    python benchmarks/compile.py --model runs/m --precision fp32 --batches 1 8

For each batch size: the wall time of one sampling run (``--steps`` ancestral steps over
``--length`` positions) with the eager model (median of --repeats), the first run with
``torch.compile(model)`` (compilation included) and later compiled runs (median), and from
these the run time after which compiling pays off. Runs alternate eager / compiled, so a
noisy machine slows both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ddlm import DiffusionPipeline
from ddlm.bundled import DEFAULT_MODEL
from ddlm.device import PRECISIONS, describe_machine


def timed_sample(pipe: DiffusionPipeline, batch: int, args: argparse.Namespace) -> float:
    start = time.perf_counter()
    pipe.sample(num_samples=batch, length=args.length, steps=args.steps, seed=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    eager = DiffusionPipeline.from_pretrained(args.model, precision=args.precision)
    compiled = DiffusionPipeline.from_pretrained(args.model, precision=args.precision)
    compiled.model = torch.compile(compiled.model)
    print(f"{args.model} ({eager.precision}), {args.steps} ancestral steps over {args.length} positions; "
          f"machine: {describe_machine()}\n")
    print("| batch | eager s/run | first compiled run s | compiled s/run | steady-state speed-up | pays off after |")
    print("|---|---|---|---|---|---|")
    for batch in args.batches:
        torch._dynamo.reset()
        timed_sample(eager, batch, args)  # warm-up: allocator, first-call overheads
        first = timed_sample(compiled, batch, args)
        eager_times, compiled_times = [], []
        for _ in range(args.repeats):
            eager_times.append(timed_sample(eager, batch, args))
            compiled_times.append(timed_sample(compiled, batch, args))
        plain, fast = statistics.median(eager_times), statistics.median(compiled_times)
        overhead = first - fast
        gain = 1 - fast / plain
        pays_off = f"{overhead / gain:.0f} s of eager sampling" if gain > 0 else "never"
        print(f"| {batch} | {plain:.2f} | {first:.1f} | {fast:.2f} | {plain / fast:.2f}x | {pays_off} |", flush=True)


if __name__ == "__main__":
    main()
