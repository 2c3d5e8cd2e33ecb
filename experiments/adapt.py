"""Adapting an autoregressive model to diffusion against training diffusion from scratch.

    python experiments/adapt.py shakespeare --minutes 45 --out runs/adapt-shakespeare
    python experiments/adapt.py tinystories --data $DDLM_DATA_DIR/tinystories/train.txt \
        --valid $DDLM_DATA_DIR/tinystories/valid.txt --minutes 8 --parallel 2 --out runs/adapt-tinystories
    python experiments/adapt.py tinystories ... --seeds 0,1,2   # each seed's table, then the ratios' mean and range

shakespeare: from the bundled ``shakespeare-ar``, adapt to masked diffusion and to block diffusion
with blocks of 4 (``ddlm train --init shakespeare-ar``) for ``--minutes`` each; report the held-out
NELBO (the last 10% of the built-in corpus, ``ddlm eval --data shakespeare``'s rows and draws), the
share of real words at temperature 0.8 (``experiments/real_words.py``) drawn in random order and left
to right, and the learning curves against minutes (``curves.png``).

tinystories (preset bpe-small): an AR model for half the minutes, then each adaptation for the other
half, against masked and block 4 from scratch and an AR model for all the minutes; held-out bits per
byte, and samples judged by the full-length AR model with their unigram entropy.

attention (TinyStories too): the attention path's effect. From the same half-time AR model, each
adaptation for the other half twice: masked with full attention at once against annealed from causal
(``--anneal-steps``), block 4 block-causal from the start against grown from block size 1
(``--grow-steps``); held-out bits per byte.

Every training runs in its own process with one thread (``OMP_NUM_THREADS=1``), ``--parallel`` at a
time; finished runs are reused (``--retrain`` starts over). Extra KEY=VALUE settings go to every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

from compare_block import reference_entropy
from real_words import real_word_share, words

from ddlm import DiffusionPipeline
from ddlm.data import builtin_text
from ddlm.device import describe_machine
from ddlm.eval import DDLMJudge, unigram_entropy
from ddlm.eval.report import EvalSettings, evaluate
from ddlm.viz.plots import plot_runs

# Settings of every adaptation run: a lower peak learning rate than from scratch, no dropout (on a CPU attention
# dropout costs about 30% of the step, and short adaptations do not overfit: docs/results.md).
ADAPT = ["optim.batch_size=16", "optim.lr=5e-4", "optim.warmup_steps=100", "optim.min_lr_ratio=0.1", "model.dropout=0"]
MASKED = ["process.name=masked", "process.estimator=count"]
BLOCK4 = ["process.name=block", "process.block_size=4", "process.estimator=count"]
LOGS = ["log.eval_every=200", "log.eval_batches=4", "log.sample_every=0", "log.save_every=200", "log.log_every=20"]


def run_all(jobs: list[tuple[str, list[str]]], out: Path, parallel: int) -> None:
    """Run ``ddlm train`` for each (name, arguments) without a finished run, ``parallel`` at a time."""
    waiting = [(name, arguments) for name, arguments in jobs if not (out / name / "training_summary.json").is_file()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    while waiting:
        batch, waiting = waiting[:parallel], waiting[parallel:]
        started = []
        for name, arguments in batch:
            shutil.rmtree(out / name, ignore_errors=True)  # an unfinished run starts again
            command = [sys.executable, "-m", "ddlm.cli", "train", "--no-progress", "--out", str(out / name), *arguments]
            print(f"training {name}: ddlm {' '.join(command[3:])}", flush=True)
            log = (out / f"{name}.log").open("w")
            started.append((name, subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
        for name, process, log in started:
            if process.wait() != 0:
                raise SystemExit(f"training {name} failed; see {log.name}")
            log.close()


def likelihood(pipe: DiffusionPipeline, data: str, args: argparse.Namespace) -> dict:
    settings = EvalSettings(metrics=("likelihood",), draws=args.draws, max_sequences=args.max_sequences)
    return evaluate(pipe, data, None, settings)["likelihood"]


def shakespeare(args: argparse.Namespace, out: Path) -> None:
    budget = ["--time-budget", f"{args.minutes}m", "--init", "shakespeare-ar", *ADAPT, *LOGS]
    jobs = [("masked", [*budget, *MASKED, "optim.ema=0.998", *args.overrides]),
            ("block4", [*budget, *BLOCK4, "optim.ema=0.995", *args.overrides])]
    run_all(jobs, out, args.parallel)
    vocabulary = set(words(builtin_text("shakespeare")))
    rows = []
    for name in ("shakespeare-ar", "shakespeare", *(name for name, _ in jobs)):
        pipe = DiffusionPipeline.from_pretrained(name if name.startswith("shakespeare") else out / name)
        like = likelihood(pipe, "shakespeare", args)
        # 256 steps for 224 tokens: at most one token per step (a block model's blocks may start in the prompt)
        orders = {"random order": {"policy": "ancestral", "steps": 256}, "left to right": {"policy": "left-to-right", "steps": 256}}
        if pipe.process.name == "ar":
            orders = {"left to right": {}}
        shares, first = {}, ""
        for order, options in orders.items():
            output = pipe.sample("ROMEO:", num_samples=args.samples, length=224, seed=0, temperature=0.8, **options)
            texts = [pipe.decode(output, row)[len("ROMEO:"):] for row in range(args.samples)]
            shares[order], first = real_word_share(texts, vocabulary), first or texts[0]
        rows.append((name, like, shares, first))
        print(f"{name}: {like['nats_per_token']:.4f} ± {like['standard_error']:.4f} nats/char, "
              f"real words {', '.join(f'{share:.1%} {order}' for order, share in shares.items())}", flush=True)
    plot_runs([out / name for name, _ in jobs], out / "curves.png")
    print(f"\nmachine: {describe_machine()}; {args.minutes} minutes of adaptation each, one thread\n")
    print("| model | held-out nats/char | real words (T = 0.8), random order | left to right | sample |")
    print("|---|---|---|---|---|")
    for name, like, shares, text in rows:
        bound = "=" if like["exact"] else "<="
        sample = text.replace("\n", " / ").replace("|", "\\|")[:70]
        random_order = f"{shares['random order']:.1%}" if "random order" in shares else "-"
        print(f"| {name} | {bound} {like['nats_per_token']:.4f} ± {like['standard_error']:.4f} | {random_order} "
              f"| {shares['left to right']:.1%} | `{sample}` |")


def tinystories(args: argparse.Namespace, out: Path) -> None:
    if not args.data:
        raise SystemExit("tinystories needs --data (and --valid): the TinyStories text files")
    if not args.seeds:
        tinystories_runs(args, out, [])
        return
    ratios = {seed: tinystories_runs(args, out / f"seed-{seed}", [f"optim.seed={seed}"]) for seed in args.seeds}
    print(f"\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}): x AR ({args.minutes:g} min), mean and range\n")
    print("| model | mean x AR | lowest | highest |")
    print("|---|---|---|---|")
    for name in [name for name in ratios[args.seeds[0]] if name != "ar-full"]:  # the reference itself: 1.000
        values = [ratios[seed][name] for seed in args.seeds]
        print(f"| {name} | {sum(values) / len(values):.3f} | {min(values):.3f} | {max(values):.3f} |")


def tinystories_runs(args: argparse.Namespace, out: Path, seed: list[str]) -> dict[str, float]:
    """The six TinyStories runs in ``out`` with the ``seed`` settings; print their table and return each
    model's held-out bits per byte as a multiple of the full-length AR model's."""
    out.mkdir(parents=True, exist_ok=True)
    data = ["--preset", "bpe-small", "--data", args.data, *(["--valid", args.valid] if args.valid else [])]
    half, full = ["--time-budget", f"{args.minutes / 2:g}m"], ["--time-budget", f"{args.minutes:g}m"]
    extra = [*LOGS, *args.overrides, *seed]
    run_all([("ar-full", [*data, *full, "process.name=ar", *extra]), ("ar-half", [*data, *half, "process.name=ar", *extra]),
             ("masked-scratch", [*data, *full, "process.name=masked", *extra]),
             ("block4-scratch", [*data, *full, *BLOCK4, *extra])], out, args.parallel)
    source = str(out / "ar-half")
    run_all([("masked-adapted", [*data, *half, "--init", source, *ADAPT, *MASKED, *extra]),
             ("block4-adapted", [*data, *half, "--init", source, *ADAPT, *BLOCK4, *extra])], out, args.parallel)
    judge_pipe = DiffusionPipeline.from_pretrained(out / "ar-full")
    judge = DDLMJudge(judge_pipe)
    valid = args.valid or args.data
    reference = reference_entropy(judge_pipe, valid, args.max_sequences)
    results = {}
    for name in ("ar-full", "ar-half", "masked-scratch", "block4-scratch", "masked-adapted", "block4-adapted"):
        pipe = DiffusionPipeline.from_pretrained(out / name)
        like = likelihood(pipe, valid, args)
        options = {"seed": 0, "steps": pipe.context_length} if pipe.process.name != "ar" else {"seed": 0}
        samples = evaluate(pipe, None, judge, EvalSettings(metrics=("samples",), num_samples=args.samples,
                                                          sampler=options))["samples"]
        results[name] = {"likelihood": like, "samples": samples}
        print(f"{name}: {like['bits_per_byte']:.4f} bits/byte, judge NLL {samples['judge_nll']:.3f}, "
              f"entropy {samples['unigram_entropy']:.3f}", flush=True)
    (out / "results.json").write_text(json.dumps({"reference_entropy": reference, **results}, indent=2, default=str))
    ar = results["ar-full"]["likelihood"]["bits_per_byte"]
    ratios = {name: result["likelihood"]["bits_per_byte"] / ar for name, result in results.items()}
    print(f"\nmachine: {describe_machine()}; {args.minutes} minutes each (adapted: {args.minutes / 2:g} AR + "
          f"{args.minutes / 2:g} adaptation), one thread each, {args.parallel} at a time{', ' + seed[0] if seed else ''}\n")
    print(f"| model | held-out bits/byte | x AR ({args.minutes:g} min) | judge NLL | entropy (text: {reference:.3f}) |")
    print("|---|---|---|---|---|")
    for name, result in results.items():
        print(f"| {name} | {result['likelihood']['bits_per_byte']:.4f} | {ratios[name]:.3f} "
              f"| {result['samples']['judge_nll']:.3f} | {result['samples']['unigram_entropy']:.3f} |")
    return ratios


def attention(args: argparse.Namespace, out: Path) -> None:
    if not args.data:
        raise SystemExit("attention needs --data (and --valid): the TinyStories text files")
    data = ["--preset", "bpe-small", "--data", args.data, *(["--valid", args.valid] if args.valid else [])]
    half = ["--time-budget", f"{args.minutes / 2:g}m"]
    extra = [*LOGS, *args.overrides]
    run_all([("ar-half", [*data, *half, "process.name=ar", *extra])], out, args.parallel)
    adapted = [*data, *half, "--init", str(out / "ar-half"), *ADAPT, *extra]
    paths = {"masked, full attention at once": [*MASKED],
             f"masked, annealed over {args.anneal_steps} steps": [*MASKED, f"adapt.anneal_steps={args.anneal_steps}"],
             "block 4, block-causal from the start": [*BLOCK4],
             f"block 4, grown over {args.grow_steps} steps": [*BLOCK4, f"adapt.grow_steps={args.grow_steps}"]}
    jobs = [(f"path{index}", [*adapted, *settings]) for index, settings in enumerate(paths.values())]
    run_all(jobs, out, args.parallel)
    valid = args.valid or args.data
    print(f"\nmachine: {describe_machine()}; {args.minutes / 2:g} AR minutes, then {args.minutes / 2:g} minutes "
          f"of each adaptation, one thread each, {args.parallel} at a time\n")
    print("| attention path | steps | held-out bits/byte |")
    print("|---|---|---|")
    results = {}
    for (name, _), label in zip(jobs, paths):
        like = likelihood(DiffusionPipeline.from_pretrained(out / name), valid, args)
        steps = json.loads((out / name / "training_summary.json").read_text()).get("steps")
        results[label] = {"steps": steps, "likelihood": like}
        stderr = like["standard_error"] * like["tokens"] / like["bytes"] / math.log(2)
        print(f"| {label} | {steps} | {like['bits_per_byte']:.4f} ± {stderr:.4f} |", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    plot_runs([out / name for name, _ in jobs], out / "curves.png")


def seed_list(text: str) -> list[int]:
    """``--seeds``: comma-separated integers."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated integers such as 0,1,2, not {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds {text}: each seed once")
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", choices=["shakespeare", "tinystories", "attention"])
    parser.add_argument("--data", help="tinystories: the training text")
    parser.add_argument("--valid", help="tinystories: the held-out text")
    parser.add_argument("--minutes", type=float, default=45, help="adaptation minutes (tinystories: in all, per model)")
    parser.add_argument("--parallel", type=int, default=1, help="trainings at once (one thread each)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--draws", type=int, default=16, help="NELBO time draws per held-out sequence")
    parser.add_argument("--max-sequences", type=int, default=64)
    parser.add_argument("--seeds", type=seed_list, help="tinystories: every run once per seed (e.g. 0,1,2; optim.seed=N, "
                        "under OUT/seed-N), with the mean and range of each ratio; one seed can be an outlier "
                        "(docs/results.md)")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--anneal-steps", type=int, default=100, help="attention: the masked run's annealing steps")
    parser.add_argument("--grow-steps", type=int, default=120, help="attention: the block run's growth steps")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    out = Path(args.out)
    if args.retrain:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    {"shakespeare": shakespeare, "tinystories": tinystories, "attention": attention}[args.corpus](args, out)


if __name__ == "__main__":
    main()
