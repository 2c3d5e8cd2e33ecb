"""Sampling policies side by side on one trained masked-diffusion model.

    python benchmarks/sampling.py --model runs/shakespeare --judge runs/shakespeare-ar \
        --data ../shared/data/tinyshakespeare.txt

For each sampler: model calls, generated tokens per second (median over repeats), the
samples' mean unigram entropy (nats), distinct bigrams, and their NLL per token under the
autoregressive judge (generative perplexity = exp of it), plus the speed-up in model calls
and time over plain 256-step ancestral sampling. With --data, a row for real text of the
same length shows what the statistics look like on data. With --plot OUT.png, the trade-off
as a picture: model calls against judge NLL, each point labelled with its sampler and entropy.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np

from ddlm import DiffusionPipeline
from ddlm.device import PRECISIONS, describe_machine
from ddlm.eval import distinct_n, load_judge, unigram_entropy
from ddlm.samplers import SamplerOptions
from ddlm.viz.plots import plot_tradeoff

BASELINE = "ancestral, 256 steps, no cache"
SAMPLERS: dict[str, SamplerOptions] = {
    BASELINE: SamplerOptions(steps=256, use_cache=False),
    "ancestral, 256 steps, cached": SamplerOptions(steps=256),
    "ancestral, 64 steps": SamplerOptions(steps=64),
    "first-hitting": SamplerOptions(steps=1, policy="first-hitting"),
    "ReMDM cap 0.02, 256 steps": SamplerOptions(steps=256, remask="cap", remask_eta=0.02),
    "confidence, blocks of 32, 256 steps (LLaDA)": SamplerOptions(steps=256, policy="confidence", block_length=32),
    "margin, blocks of 32, 64 steps": SamplerOptions(steps=64, policy="margin", block_length=32),
    "threshold 0.9, blocks of 32, <=256 steps (Fast-dLLM)": SamplerOptions(
        steps=256, policy="threshold", block_length=32),
    "threshold 0.9, blocks of 32, <=256 steps, prefix cache": SamplerOptions(
        steps=256, policy="threshold", block_length=32, prefix_cache=True),
    "threshold 0.9, blocks of 32, <=64 steps, prefix cache": SamplerOptions(
        steps=64, policy="threshold", block_length=32, prefix_cache=True),
    "threshold 0.7, whole canvas, <=256 steps": SamplerOptions(steps=256, policy="threshold", threshold=0.7),
    "random + threshold 0.9, whole canvas, <=64 steps": SamplerOptions(steps=64, policy="random", threshold=0.9),
    "random + threshold 0.9, blocks of 32, <=64 steps": SamplerOptions(
        steps=64, policy="random", threshold=0.9, block_length=32),
    "random + threshold 0.9, blocks of 32, <=64 steps, prefix cache": SamplerOptions(
        steps=64, policy="random", threshold=0.9, block_length=32, prefix_cache=True),
}


def run(pipe: DiffusionPipeline, options: SamplerOptions, args: argparse.Namespace) -> dict:
    """Draw ``repeats`` batches; time each, pool the samples."""
    texts, seconds, calls = [], [], []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        output = pipe.sample(options=options, num_samples=args.samples, length=args.length, seed=args.seed + repeat)
        seconds.append(time.perf_counter() - start)
        calls.append(output.model_calls)
        texts += [pipe.decode(output, row) for row in range(args.samples)]
    return {"texts": texts, "seconds": statistics.median(seconds), "calls": statistics.median(calls)}


def real_text_rows(path: str, count: int, length: int, seed: int) -> list[str]:
    text = Path(path).read_text(encoding="utf-8")
    starts = np.random.default_rng(seed).integers(0, len(text) - length, count)
    return [text[start : start + length] for start in starts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a masked-diffusion model directory")
    parser.add_argument("--judge", help="an autoregressive model directory trained on the same data")
    parser.add_argument("--data", help="a text file for the real-text reference row")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--samples", type=int, default=8, help="samples per batch")
    parser.add_argument("--repeats", type=int, default=3, help="batches per sampler (time: median)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="run only these samplers (names as in the table)")
    parser.add_argument("--plot", metavar="OUT", help="also draw model calls against judge NLL (a .png; needs --judge)")
    args = parser.parse_args()
    if args.plot and not args.judge:
        parser.error("--plot draws the judge NLL: pass --judge too")

    pipe = DiffusionPipeline.from_pretrained(args.model, precision=args.precision)
    judge = load_judge(args.judge) if args.judge else None
    chosen = {name: options for name, options in SAMPLERS.items() if not args.only or name in args.only}
    results = {name: run(pipe, options, args) for name, options in chosen.items()}
    if args.data:
        rows = real_text_rows(args.data, args.samples * args.repeats, args.length, args.seed)
        results["real text (reference)"] = {"texts": rows, "seconds": math.nan, "calls": math.nan}

    print(f"\n{args.samples} x {args.repeats} unconditional samples of {args.length} tokens from {args.model} "
          f"({args.precision}); machine: {describe_machine()}\n")
    print("| sampler | model calls | tokens/s | calls saved | time saved | unigram entropy | entropy vs baseline "
          "| distinct-2 | judge NLL (nats/token) | gen. PPL |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for result in results.values():
        result["entropy"] = statistics.mean(unigram_entropy(text) for text in result["texts"])
    base = results.get(BASELINE)
    for name, result in results.items():
        texts = result["texts"]
        nll = result["nll"] = judge.mean_nll(texts) if judge else math.nan
        speed = args.samples * args.length / result["seconds"]
        calls_saved = base["calls"] / result["calls"] if base else math.nan
        time_saved = base["seconds"] / result["seconds"] if base else math.nan
        entropy_change = result["entropy"] / base["entropy"] - 1 if base else math.nan
        print(f"| {name} | {number(result['calls'], '.0f')} | {number(speed, ',.0f')} | {number(calls_saved, '.1f', 'x')} "
              f"| {number(time_saved, '.1f', 'x')} "
              f"| {result['entropy']:.3f} | {entropy_change:+.1%} | {distinct_n(texts, 2):.3f} | {nll:.3f} "
              f"| {math.exp(nll):.2f} |")
    print(f"\nprefix cache, greedy: {prefix_cache_disagreement(pipe, args):.1%} of generated tokens differ "
          "from the same sampler without it")
    if args.plot:
        points = [{"label": name, "calls": result["calls"], "nll": result["nll"], "entropy": result["entropy"]}
                  for name, result in results.items() if not math.isnan(result["calls"])]
        plot_tradeoff(points, args.plot, base["entropy"] if base else None)
        print(f"wrote {args.plot}")


def number(value: float, spec: str, unit: str = "") -> str:
    """``value`` formatted, or n/a for the rows that have none (real text has no model calls)."""
    return "n/a" if math.isnan(value) else f"{value:{spec}}{unit}"


def prefix_cache_disagreement(pipe: DiffusionPipeline, args: argparse.Namespace) -> float:
    """At temperature 0, the fraction of tokens the prefix-cache approximation changes."""
    options = SamplerOptions(steps=256, policy="threshold", block_length=32, temperature=0, seed=args.seed)
    exact = pipe.sample(options=options, num_samples=args.samples, length=args.length).tokens
    cached = pipe.sample(options=options, num_samples=args.samples, length=args.length, prefix_cache=True).tokens
    return float((exact != cached).double().mean())


if __name__ == "__main__":
    main()
