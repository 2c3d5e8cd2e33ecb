"""Block diffusion between the autoregressive model and masked diffusion, under one training budget.

    python experiments/compare_block.py --data ../shared/data/tinyshakespeare.txt --budget 600 \
        --parallel 2 --out runs/block-compare

Trains the autoregressive model, block diffusion with blocks of 4 and of 16, and masked
diffusion on the same preset (char-small: one backbone shape; masked diffusion keeps the
preset's noise conditioning, the others have none) for the same training time, ``--parallel``
runs at a time, each with one thread (``OMP_NUM_THREADS=1``). Then, for each model: the
held-out NELBO (nats per character; the exact NLL for AR) with ``ddlm eval``'s code, and
for each of its sampler settings: model calls, generated tokens per second, NLL per token of
the samples under the autoregressive model as judge, and their unigram entropy next to the
held-out text's. The best setting of a model is the one with the lowest judge NLL among those
whose entropy is within 5% of the text's (else the one with the closest entropy).
Finished runs are reused; pass --retrain to start over.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from ddlm import DiffusionPipeline
from ddlm.device import describe_machine
from ddlm.eval import DDLMJudge, unigram_entropy
from ddlm.eval.report import EvalSettings, evaluate, evaluation_rows

METHODS: dict[str, list[str]] = {
    "autoregressive": ["process.name=ar"],
    "block 4": ["process.name=block", "process.block_size=4"],
    "block 16": ["process.name=block", "process.block_size=16"],
    "masked": ["process.name=masked"],
}
JUDGE = "autoregressive"
ENTROPY_TOLERANCE = 0.05


def sampler_settings(process: str, block_size: int, length: int) -> dict[str, dict]:
    """The sampler settings tried for a model (keywords of SamplerOptions)."""
    if process == "ar":
        return {"left to right": {}}
    if process == "masked":
        return {
            "ancestral, 256 steps, no cache": {"steps": 256, "use_cache": False},
            "ancestral, 64 steps": {"steps": 64},
            "confidence, blocks of 32, 256 steps": {"steps": 256, "policy": "confidence", "block_length": 32},
        }
    blocks = length // block_size
    return {
        "ancestral, 1 step per block": {"steps": blocks},
        f"ancestral, {block_size} steps per block": {"steps": length},
        "confidence, 1 token per step": {"steps": length, "policy": "confidence"},
        "threshold 0.9": {"steps": length, "policy": "threshold"},
        "ancestral, 1 step per block, temperature 0.9": {"steps": blocks, "temperature": 0.9},
    }


def folder(method: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in method.lower()).strip("-")


def train_all(runs: dict[str, Path], args: argparse.Namespace) -> None:
    """Train the methods without a finished run, ``args.parallel`` at a time, each in its own process."""
    waiting = [method for method, run in runs.items() if not (run / "training_summary.json").is_file()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    while waiting:
        batch, waiting = waiting[: args.parallel], waiting[args.parallel :]
        jobs = []
        for method in batch:
            if runs[method].exists():
                shutil.rmtree(runs[method])  # an unfinished run: start it again
            command = [sys.executable, "-m", "ddlm.cli", "train", "--preset", args.preset, "--data", args.data,
                       "--time-budget", str(args.budget), "--out", str(runs[method]),
                       *METHODS[method], *args.overrides]
            log = (Path(args.out) / f"{folder(method)}.log").open("w")
            print(f"training {method}: {' '.join(command[2:])}", flush=True)
            jobs.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        for job, log in jobs:
            if job.wait() != 0:
                raise SystemExit(f"a training failed; see {log.name}")
            log.close()


def reference_entropy(pipe: DiffusionPipeline, data: str, count: int) -> float:
    """Mean unigram entropy of held-out text cut into pieces of the context length (the samples' length)."""
    return statistics.mean(unigram_entropy(row.tolist()) for row in evaluation_rows(pipe, data, count))


def best_setting(rows: dict[str, dict], reference: float) -> str:
    close = {name: row for name, row in rows.items() if abs(row["unigram_entropy"] / reference - 1) <= ENTROPY_TOLERANCE}
    if close:
        return min(close, key=lambda name: close[name]["judge_nll"])
    return min(rows, key=lambda name: abs(rows[name]["unigram_entropy"] - reference))


def evaluate_method(pipe: DiffusionPipeline, judge: DDLMJudge, args: argparse.Namespace) -> dict:
    """Held-out NELBO, and sample metrics (context-length samples) for each sampler setting."""
    settings = EvalSettings(metrics=("likelihood",), draws=args.draws, max_sequences=args.max_sequences)
    likelihood = evaluate(pipe, args.valid or args.data, None, settings)["likelihood"]
    block_size = getattr(pipe.process, "block_size", 0)
    samples = {}
    for name, options in sampler_settings(pipe.process.name, block_size, pipe.context_length).items():
        settings = EvalSettings(metrics=("samples",), num_samples=args.samples, sampler={"seed": 0, **options})
        samples[name] = row = evaluate(pipe, None, judge, settings)["samples"]
        print(f"  {name}: {row['model_calls']} calls, {row['tokens_per_second']:,.0f} tokens/s, "
              f"judge NLL {row['judge_nll']:.3f}, entropy {row['unigram_entropy']:.3f}", flush=True)
    return {"likelihood": likelihood, "samples": samples}


def table(results: dict[str, dict], reference: float) -> str:
    lines = [
        "| method | held-out NELBO (nats/char) | best sampler setting | model calls | tokens/s | judge NLL | entropy "
        f"(text: {reference:.3f}) | sample |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, result in results.items():
        like, best = result["likelihood"], result["best"]
        row = result["samples"][best]
        bound = "= " if like["exact"] else "<= "
        sample = row["examples"][0].replace("\n", " / ").replace("|", "\\|")[:80]
        lines.append(f"| {method} | {bound}{like['nats_per_token']:.3f} ± {like['standard_error']:.3f} | {best} "
                     f"| {row['model_calls']} | {row['tokens_per_second']:,.0f} | {row['judge_nll']:.3f} "
                     f"| {row['unigram_entropy']:.3f} | `{sample}` |")
    lines += ["", "| method | sampler setting | model calls | tokens/s | judge NLL | entropy |", "|---|---|---|---|---|---|"]
    for method, result in results.items():
        for name, row in result["samples"].items():
            lines.append(f"| {method} | {name} | {row['model_calls']} | {row['tokens_per_second']:,.0f} "
                         f"| {row['judge_nll']:.3f} | {row['unigram_entropy']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--valid")
    parser.add_argument("--preset", default="char-small")
    parser.add_argument("--budget", type=float, default=600, help="training seconds per method")
    parser.add_argument("--parallel", type=int, default=1, help="trainings run at once (one thread each)")
    parser.add_argument("--out", default="runs/block-compare")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--draws", type=int, default=8, help="NELBO time draws per held-out sequence")
    parser.add_argument("--max-sequences", type=int, default=64)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()

    runs = {method: Path(args.out) / folder(method) for method in METHODS}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.retrain:
        for run in runs.values():
            shutil.rmtree(run, ignore_errors=True)
    train_all(runs, args)
    judge_pipe = DiffusionPipeline.from_pretrained(runs[JUDGE])
    judge = DDLMJudge(judge_pipe)
    reference = reference_entropy(judge_pipe, args.valid or args.data, args.max_sequences)
    results = {}
    for method, run in runs.items():
        print(f"{method}:", flush=True)
        pipe = DiffusionPipeline.from_pretrained(run)
        results[method] = evaluate_method(pipe, judge, args)
        results[method]["best"] = best_setting(results[method]["samples"], reference)
        results[method]["training"] = json.loads((run / "training_summary.json").read_text())
    (Path(args.out) / "results.json").write_text(json.dumps({"reference_entropy": reference, **results}, indent=2,
                                                            default=str))
    print(f"\n{args.budget:.0f} s of training each ({args.parallel} at a time, one thread each), preset {args.preset}; "
          f"machine: {describe_machine()}\n")
    print(table(results, reference))
    ar = results[JUDGE]["likelihood"]["nats_per_token"]
    for method in ("block 4", "block 16"):
        gap = results[method]["likelihood"]["nats_per_token"] - ar
        print(f"\n{method}: {gap:+.3f} nats/char from the autoregressive model (goal: within 0.15)")


if __name__ == "__main__":
    main()
