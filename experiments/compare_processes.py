"""Train masked diffusion, SEDD (absorbing, uniform) and the AR baseline on one corpus under
the same preset and time budget, one after the other, and print a markdown table.

    python experiments/compare_processes.py --data ../shared/data/tinyshakespeare.txt \
        --preset char-small --budget 600 --out runs/compare

Each process trains with its default noise schedule (masked: linear; SEDD absorbing: log-linear;
SEDD uniform: geometric). Each row: the schedule used, validation NELBO (an upper bound on the
NLL; the exact NLL for AR) in nats and bits per token, training tokens per second, and the start
of a sample.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from ddlm import DiffusionPipeline
from ddlm.device import describe_machine
from ddlm.training import load_config, prepare_training
from ddlm.training.run import load_corpora

PROCESSES = ("masked", "sedd-absorb", "sedd-uniform", "ar")


def train_or_reuse(out: Path, overrides: list[str], args: argparse.Namespace) -> dict:
    """Train ``args.preset`` with ``overrides`` for ``args.budget`` seconds into ``out`` (or reuse
    a finished run there) and return its training summary."""
    summary_path = out / "training_summary.json"
    if not summary_path.is_file():
        config = load_config(args.preset, overrides=[*overrides, *args.overrides])
        config.optim.time_budget = args.budget
        trainer = prepare_training(config, out, data=args.data, valid=args.valid, show_progress=not args.quiet)
        trainer.train()
    return json.loads(summary_path.read_text())


def train_one(process: str, args: argparse.Namespace) -> dict:
    """Train one process (or reuse a finished run) and return its summary plus a sample."""
    out = Path(args.out) / process
    summary = train_or_reuse(out, [f"process.name={process}"], args)
    pipe = DiffusionPipeline.from_pretrained(out)
    summary["sample"] = pipe.generate(args.prompt, length=args.sample_length, steps=args.sample_steps, seed=0)[0]
    summary["schedule"] = schedule_label(pipe.process.to_dict())
    return summary


def schedule_label(process: dict) -> str:
    """The noise schedule of a process description, e.g. "geometric (sigma_min=0.0001, sigma_max=20)"."""
    if process.get("schedule") is None:
        return "none"
    parameters = {key: value for key, value in process["schedule"].items() if key != "name"}
    listed = ", ".join(f"{key}={value:g}" for key, value in parameters.items())
    return process["schedule"]["name"] + (f" ({listed})" if listed else "")


def unigram_nats(args: argparse.Namespace, reference_run: Path) -> float:
    """Cross-entropy (nats/token) of the validation tokens under the training unigram
    frequencies (add-one smoothed): the baseline every model must beat."""
    pipe = DiffusionPipeline.from_pretrained(reference_run)
    config = load_config(args.preset, overrides=args.overrides)
    train, valid = load_corpora(config, pipe.tokenizer, args.data, args.valid, None)
    vocab = pipe.tokenizer.vocab_size
    counts = np.bincount(np.asarray(train.tokens), minlength=vocab) + 1.0
    log_probs = np.log(counts / counts.sum())
    return float(-log_probs[np.asarray(valid.tokens)].mean())


def table(results: dict[str, dict], unigram: float) -> str:
    lines = [
        "| process | schedule | valid NELBO (nats/token) | bits/token | parameters | training tokens/s | steps | sample |",
        "|---|---|---|---|---|---|---|---|",
        f"| unigram baseline | | {unigram:.3f} | {unigram / math.log(2):.3f} | | | | |",
    ]
    for process, summary in results.items():
        nats = summary["final_valid_nelbo"]
        speed = summary["tokens"] / summary["train_seconds"]
        sample = summary["sample"].replace("\n", " / ").replace("|", "\\|")[:120]
        lines.append(f"| {process} | {summary['schedule']} | {nats:.3f} | {nats / math.log(2):.3f} "
                     f"| {summary['parameters'] / 1e6:.2f} M "
                     f"| {speed:,.0f} | {summary['steps']} | `{sample}` |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--valid")
    parser.add_argument("--preset", default="char-small")
    parser.add_argument("--budget", type=float, default=600, help="training seconds per process")
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--processes", nargs="+", default=list(PROCESSES), choices=PROCESSES)
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--sample-length", type=int, default=200)
    parser.add_argument("--sample-steps", type=int, default=200)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    results = {process: train_one(process, args) for process in args.processes}
    print(f"\n{args.budget:.0f} s of training each, preset {args.preset}; machine: {describe_machine()}\n")
    print(table(results, unigram_nats(args, Path(args.out) / args.processes[0])))


if __name__ == "__main__":
    main()
