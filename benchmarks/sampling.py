"""The sampling frontier of one masked-diffusion model: cost against quality, side by side in one run.

    python benchmarks/sampling.py                                   # the bundled models, both precisions
    python benchmarks/sampling.py --model runs/m --judge runs/ar --plot docs/sampling-frontier.png

For each sampler and precision: model calls, seconds per batch and generated tokens per
second (medians over repeats), the samples' mean unigram entropy and their NLL per token
under the autoregressive judge (each with its standard error over samples: the run-to-run
noise), distinct bigrams, and the savings in model calls and time over the baseline, 256-step
ancestral sampling in fp32. Every sampler runs in the first precision of --precisions;
the samplers of PRECISION_CHECK also in the others, for the precision quality table. A row
of held-out text of the same length shows what the statistics look like on data. With
--plot OUT.png, the frontier as a picture: judge NLL against model calls and against time;
--replot TABLE.md --plot OUT.png redraws it from the table of an earlier run (e.g. docs/results.md).
The batches of a sampler are interleaved with no other work, so the times compare within the run.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from ddlm import DiffusionPipeline
from ddlm.bundled import DEFAULT_JUDGE, DEFAULT_MODEL
from ddlm.device import PRECISIONS, describe_machine, has_fast_bf16
from ddlm.eval import distinct_n, load_judge, unigram_entropy
from ddlm.eval.report import evaluation_rows
from ddlm.samplers import SamplerOptions
from ddlm.viz.plots import plot_tradeoff

BASELINE = "ancestral, 256 steps"
SAMPLERS: dict[str, SamplerOptions] = {
    BASELINE: SamplerOptions(steps=256),
    "ancestral, 64 steps": SamplerOptions(steps=64),
    "ancestral, 32 steps": SamplerOptions(steps=32),
    "first-hitting": SamplerOptions(policy="first-hitting"),
    "ReMDM cap 0.02, 256 steps": SamplerOptions(steps=256, remask="cap", remask_eta=0.02),
    "confidence, blocks of 32, 256 steps (LLaDA)": SamplerOptions(steps=256, policy="confidence", block_length=32),
    "threshold 0.9, blocks of 32 (Fast-dLLM)": SamplerOptions(steps=256, policy="threshold", block_length=32),
    "threshold 0.9, blocks of 32, prefix cache": SamplerOptions(
        steps=256, policy="threshold", block_length=32, prefix_cache=True),
    "threshold 0.9, blocks of 32, dual cache": SamplerOptions(
        steps=256, policy="threshold", block_length=32, dual_cache=True),
    "random + threshold 0.9, <=64 steps": SamplerOptions(steps=64, policy="random", threshold=0.9),
    "random + threshold 0.9, <=32 steps": SamplerOptions(steps=32, policy="random", threshold=0.9),
    "confidence + entropy bound 2": SamplerOptions(steps=256, policy="confidence", entropy_bound=2.0),
    "random + entropy bound 2": SamplerOptions(steps=256, policy="random", entropy_bound=2.0),
    "random + entropy bound 4": SamplerOptions(steps=256, policy="random", entropy_bound=4.0),
    "random + entropy bound 8": SamplerOptions(steps=256, policy="random", entropy_bound=8.0),
    "random + entropy bound 8, blocks of 64": SamplerOptions(
        steps=256, policy="random", entropy_bound=8.0, block_length=64),
    "random + entropy bound 8, blocks of 64, dual cache": SamplerOptions(
        steps=256, policy="random", entropy_bound=8.0, block_length=64, dual_cache=True),
    "random + entropy bound 16": SamplerOptions(steps=256, policy="random", entropy_bound=16.0),
    "confidence + entropy bound 8": SamplerOptions(steps=256, policy="confidence", entropy_bound=8.0),
    "random + threshold 0.9 + entropy bound 4": SamplerOptions(
        steps=256, policy="random", threshold=0.9, entropy_bound=4.0),
    "random + threshold 0.9 + entropy bound 8": SamplerOptions(
        steps=256, policy="random", threshold=0.9, entropy_bound=8.0),
}
PRECISION_CHECK = (BASELINE, "ancestral, 64 steps", "random + threshold 0.9, <=32 steps", "random + entropy bound 8")
QUALITY_TOLERANCE = 0.05  # entropy and judge NLL within 5% of the baseline


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


def mean_and_error(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error."""
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan


def score(result: dict, judge) -> None:
    """Add entropy and judge NLL (mean, standard error over samples) to ``result``."""
    texts = [text for text in result["texts"] if text]
    result["entropy"], result["entropy_se"] = mean_and_error([unigram_entropy(text) for text in texts])
    per_sample = [judge.mean_nll([text]) for text in texts]
    result["nll"], result["nll_se"] = mean_and_error(per_sample)
    result["distinct"] = distinct_n(texts, 2)


def number(value: float, spec: str, unit: str = "") -> str:
    """``value`` formatted, or n/a for the rows that have none (text has no model calls)."""
    return "n/a" if math.isnan(value) else f"{value:{spec}}{unit}"


def baseline(results: dict[tuple[str, str], dict]) -> dict:
    """The result everything is compared with: the baseline sampler in fp32, else in the precision it ran in."""
    return results.get((BASELINE, "fp32")) or next(result for (name, _), result in results.items() if name == BASELINE)


def frontier_table(results: dict[tuple[str, str], dict], args: argparse.Namespace) -> list[str]:
    base = baseline(results)
    lines = ["| sampler | precision | model calls | s / batch | tokens/s | calls saved | time saved | entropy "
             "| vs baseline | judge NLL | vs baseline | distinct-2 |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (name, precision), result in results.items():
        speed = args.samples * args.length / result["seconds"]
        within = (abs(result["entropy"] / base["entropy"] - 1) <= QUALITY_TOLERANCE
                  and result["nll"] / base["nll"] - 1 <= QUALITY_TOLERANCE)
        mark = " ✓" if within and not math.isnan(result["calls"]) else ""
        lines.append(
            f"| {name}{mark} | {precision} | {number(result['calls'], '.0f')} | {number(result['seconds'], '.1f')} "
            f"| {number(speed, ',.0f')} | {number(base['calls'] / result['calls'], '.1f', 'x')} "
            f"| {number(base['seconds'] / result['seconds'], '.1f', 'x')} "
            f"| {result['entropy']:.3f} ± {result['entropy_se']:.3f} | {result['entropy'] / base['entropy'] - 1:+.1%} "
            f"| {result['nll']:.3f} ± {result['nll_se']:.3f} | {result['nll'] / base['nll'] - 1:+.1%} "
            f"| {result['distinct']:.3f} |")
    return lines


def precision_table(results: dict[tuple[str, str], dict], precisions: list[str]) -> list[str]:
    """The samplers run in every precision: entropy and judge NLL side by side, and their differences
    in units of the combined standard error."""
    if len(precisions) < 2:
        return []
    first, other = precisions[0], precisions[1]
    lines = [f"| sampler | entropy {first} | entropy {other} | difference / s.e. | judge NLL {first} "
             f"| judge NLL {other} | difference / s.e. | time {other} / {first} |", "|---|---|---|---|---|---|---|---|"]
    for name in PRECISION_CHECK:
        if (name, first) not in results or (name, other) not in results:
            continue
        a, b = results[(name, first)], results[(name, other)]
        z = {key: (b[key] - a[key]) / math.hypot(a[f"{key}_se"], b[f"{key}_se"]) for key in ("entropy", "nll")}
        lines.append(f"| {name} | {a['entropy']:.3f} | {b['entropy']:.3f} | {z['entropy']:+.1f} | {a['nll']:.3f} "
                     f"| {b['nll']:.3f} | {z['nll']:+.1f} | {b['seconds'] / a['seconds']:.2f} |")
    return lines


def prefix_and_dual_disagreement(pipe: DiffusionPipeline, args: argparse.Namespace) -> dict[str, float]:
    """At temperature 0, the fraction of generated tokens each cache approximation changes."""
    options = SamplerOptions(steps=256, policy="threshold", block_length=32, temperature=0, seed=args.seed)
    exact = pipe.sample(options=options, num_samples=args.samples, length=args.length).tokens
    return {cache: float((pipe.sample(options=options, num_samples=args.samples, length=args.length,
                                      **{cache: True}).tokens != exact).double().mean())
            for cache in ("prefix_cache", "dual_cache")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a masked-diffusion model (default: the bundled one)")
    parser.add_argument("--judge", default=DEFAULT_JUDGE, help="an autoregressive model trained on the same data")
    parser.add_argument("--data", default="shakespeare", help="held-out text for the reference row")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--samples", type=int, default=8, help="samples per batch")
    parser.add_argument("--repeats", type=int, default=3, help="batches per sampler (time: median)")
    default_precisions = ["bf16", "fp32"] if has_fast_bf16("cpu") else ["fp32"]
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS[1:], default=default_precisions,
                        help="every sampler runs in the first; PRECISION_CHECK's also in the others")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="run only these samplers (names as in the table)")
    parser.add_argument("--plot", metavar="OUT", help="also draw the frontier (a .png)")
    parser.add_argument("--replot", metavar="TABLE", help="only draw --plot from the frontier table in this file")
    args = parser.parse_args()
    if args.replot:
        plot_frontier(read_frontier_table(args.replot), args.plot)
        return

    pipes = {precision: DiffusionPipeline.from_pretrained(args.model, precision=precision)
             for precision in args.precisions}
    judge = load_judge(args.judge)
    chosen = [name for name in SAMPLERS if not args.only or name in args.only]
    results: dict[tuple[str, str], dict] = {}
    for name in chosen:
        for precision in args.precisions:
            if precision == args.precisions[0] or name in PRECISION_CHECK:
                results[(name, precision)] = run(pipes[precision], SAMPLERS[name], args)
                print(f"{name} [{precision}]: {results[(name, precision)]['calls']:.0f} calls, "
                      f"{results[(name, precision)]['seconds']:.1f} s", flush=True)
    rows = evaluation_rows(pipes[args.precisions[0]], args.data, args.samples * args.repeats)
    text = [pipes[args.precisions[0]].tokenizer.decode(row[: args.length].tolist()) for row in rows]
    results[("held-out text (reference)", "")] = {"texts": text, "seconds": math.nan, "calls": math.nan}
    for result in results.values():
        score(result, judge)

    print(f"\n{args.samples} x {args.repeats} unconditional samples of {args.length} tokens from {args.model}, "
          f"judge {args.judge}; machine: {describe_machine()}; ✓: entropy and judge NLL within "
          f"{QUALITY_TOLERANCE:.0%} of the baseline\n")
    print("\n".join(frontier_table(results, args)))
    print("\n".join(["", *precision_table(results, args.precisions)]))
    disagreement = prefix_and_dual_disagreement(pipes[args.precisions[0]], args)
    print(f"\ngreedy threshold sampling in blocks of 32: the prefix cache changes {disagreement['prefix_cache']:.1%} "
          f"and the dual cache {disagreement['dual_cache']:.1%} of the generated tokens")
    if args.plot:
        plot_frontier(results, args.plot)


def plot_frontier(results: dict[tuple[str, str], dict], out: str) -> None:
    points = [{"label": f"{name} [{precision}]", "calls": result["calls"], "seconds": result["seconds"],
               "nll": result["nll"], "entropy": result["entropy"], "precision": precision}
              for (name, precision), result in results.items() if not math.isnan(result["calls"])]
    plot_tradeoff(points, out, baseline(results)["entropy"], QUALITY_TOLERANCE)
    print(f"wrote {out}")


def read_frontier_table(path: str) -> dict[tuple[str, str], dict]:
    """The results of the frontier table this script printed (held in a markdown file), as ``main`` keeps them."""
    results = {}
    lines = iter(open(path, encoding="utf-8").read().splitlines())
    next(line for line in lines if line.startswith("| sampler | precision | model calls |"))
    next(lines)  # |---|---|...
    for line in lines:
        if not line.startswith("|"):
            break
        name, precision, calls, seconds, *_, entropy, _, nll, _, _ = [cell.strip() for cell in line.strip("|").split("|")]
        if calls != "n/a":
            results[(name.removesuffix(" ✓"), precision)] = {
                "calls": float(calls), "seconds": float(seconds),
                "entropy": float(entropy.split(" ±")[0]), "nll": float(nll.split(" ±")[0])}
    return results


if __name__ == "__main__":
    main()
