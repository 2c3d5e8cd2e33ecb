"""The methods side by side on TinyStories with a BPE tokenizer, under one equal compute budget.

    python experiments/compare_methods.py --data ../shared/data/tinystories/train.txt \
        --valid ../shared/data/tinystories/valid.txt --budget 600 --out runs/methods

Trains masked diffusion (linear and cosine schedules), SEDD absorbing and SEDD uniform (with
SEDD's noise for each graph: log-linear and geometric) and the autoregressive model one after
the other with the same preset (bpe-small: one BPE tokenizer trained on the data, the same
backbone) and the same training time, then evaluates each with the code of ``ddlm eval``: bits
per byte on the validation text (the NELBO bound for diffusion, the exact NLL for AR),
generative perplexity of unconditional samples under the AR model as judge with their unigram
entropy at two step counts, and training / sampling tokens per second.
Finished runs are reused; pass --retrain to start over.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

from compare_processes import schedule_label, train_or_reuse

from ddlm import DiffusionPipeline
from ddlm.device import describe_machine
from ddlm.eval import DDLMJudge
from ddlm.eval.report import EvalSettings, evaluate

METHODS: dict[str, list[str]] = {
    "masked, linear (MDLM)": ["process.name=masked", "process.schedule.name=linear"],
    "masked, cosine (MD4)": ["process.name=masked", "process.schedule.name=cosine"],
    "SEDD absorbing": ["process.name=sedd-absorb"],
    "SEDD uniform": ["process.name=sedd-uniform"],
    "autoregressive": ["process.name=ar"],
}
JUDGE = "autoregressive"


def folder(method: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in method.lower()).strip("-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--valid")
    parser.add_argument("--preset", default="bpe-small")
    parser.add_argument("--budget", type=float, default=600, help="training seconds per method")
    parser.add_argument("--out", default="runs/methods")
    parser.add_argument("--steps", type=int, nargs=2, default=[32, 128], help="the two sampling step counts")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--draws", type=int, default=8, help="NELBO time draws per validation sequence")
    parser.add_argument("--max-sequences", type=int, default=128)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()

    runs = {method: Path(args.out) / folder(method) for method in METHODS}
    summaries = {}
    for method, overrides in METHODS.items():
        if args.retrain and runs[method].exists():
            shutil.rmtree(runs[method])
        summaries[method] = train_or_reuse(runs[method], overrides, args)
    judge = DDLMJudge(DiffusionPipeline.from_pretrained(runs[JUDGE]))
    results = {}
    for method, run in runs.items():
        pipe = DiffusionPipeline.from_pretrained(run)
        step_counts = args.steps if pipe.process.name != "ar" else args.steps[-1:]
        likelihood = None
        samples = {}
        for steps in step_counts:
            settings = EvalSettings(metrics=("likelihood", "samples") if likelihood is None else ("samples",),
                                    draws=args.draws, max_sequences=args.max_sequences, num_samples=args.samples,
                                    sampler={"steps": steps, "seed": 0})
            result = evaluate(pipe, args.valid or args.data, judge, settings)
            likelihood = likelihood or result["likelihood"]
            samples[steps] = result["samples"]
        summary = summaries[method]
        results[method] = {"likelihood": likelihood, "samples": samples, "training": summary,
                           "schedule": schedule_label(pipe.process.to_dict()),
                           "train_tokens_per_second": summary["tokens"] / summary["train_seconds"]}
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\n{args.budget:.0f} s of training each, preset {args.preset}; machine: {describe_machine()}\n")
    print(table(results, args.steps))


def table(results: dict[str, dict], step_counts: list[int]) -> str:
    low, high = step_counts
    lines = [
        f"| method | schedule | bits/byte (valid) | gen. PPL / entropy, {low} steps | gen. PPL / entropy, {high} steps "
        "| training tokens/s | sampling tokens/s | steps trained |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [row(method, result, low, high) for method, result in results.items()]
    return "\n".join(lines)


def row(method: str, result: dict, low: int, high: int) -> str:
    like, samples = result["likelihood"], result["samples"]
    bound = "" if like["exact"] else "<= "
    error = like["standard_error"] / math.log(2) * like["tokens"] / like["bytes"]

    def quality(steps: int) -> str:
        if steps not in samples:
            return "n/a (one call per token)"
        return f"{samples[steps]['generative_perplexity']:.1f} / {samples[steps]['unigram_entropy']:.2f}"

    return (f"| {method} | {result['schedule']} | {bound}{like['bits_per_byte']:.3f} ± {error:.3f} "
            f"| {quality(low)} | {quality(high)} "
            f"| {result['train_tokens_per_second']:,.0f} | {samples[max(samples)]['tokens_per_second']:,.0f} "
            f"| {result['training']['steps']} |")


if __name__ == "__main__":
    main()
