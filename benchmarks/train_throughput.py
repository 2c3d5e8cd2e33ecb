"""Training throughput in fp32 and bf16, and model FLOPs utilisation, side by side.

    python benchmarks/train_throughput.py --preset char-small
    python benchmarks/train_throughput.py --preset char-small process.name=block --vary model.dropout=0,0.1

Runs the real Trainer step (forward, NELBO, backward, clipping, AdamW, EMA) on random
tokens, then measures the matrix-multiply peak of this machine in the same run, and
prints tokens/s, achieved TFLOP/s and MFU = achieved / peak for each precision; with
``--vary KEY=A,B,...`` for each value of that setting too, and the ratios to the first value.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from ddlm.data import TokenizedCorpus
from ddlm.device import autocast, describe_machine, has_fast_bf16
from ddlm.tokenizers import CharTokenizer
from ddlm.training import RunConfig, Trainer, load_config

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\n-&3$"  # 65 symbols, as tiny Shakespeare


def model_flops_per_token(trainer: Trainer) -> float:
    """Training FLOPs per token: 6 N for the matrix products plus 12 * layers * width * context for
    attention scores and values (forward and backward). N counts the parameters applied at every
    position (the tied output head included); the noise embedding and adaLN modulations run once
    per sequence and are left out."""
    config = trainer.model.config
    per_position = sum(parameter.numel() for name, parameter in trainer.model.named_parameters()
                       if "modulation" not in name and not name.startswith("noise_embed"))
    return 6 * per_position + 12 * config.n_layers * config.d_model * config.context_length


def timed_repeats(work, repeats: int, warmup: int, max_seconds: float) -> list[float]:
    """Durations of ``repeats`` calls after ``warmup``; stops early (after at least two) past ``max_seconds``,
    so that an emulated precision (bf16 on a CPU without bf16 instructions) cannot stall the run."""
    for _ in range(warmup):
        work()
    durations: list[float] = []
    begin = time.perf_counter()
    while len(durations) < repeats and (len(durations) < 2 or time.perf_counter() - begin < max_seconds):
        start = time.perf_counter()
        work()
        durations.append(time.perf_counter() - start)
    return durations


def matmul_peak(precision: str, size: int = 2048, repeats: int = 10) -> float:
    """Median FLOP/s of a square matrix product under the same autocast as training."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    with autocast(torch.device("cpu"), precision):
        durations = timed_repeats(lambda: torch.mm(a, b), repeats, warmup=1, max_seconds=10)
    return 2 * size**3 / statistics.median(durations)


def measure(config: RunConfig, tokenizer: CharTokenizer, corpus: TokenizedCorpus, precision: str,
            args: argparse.Namespace) -> tuple[float, float, float, int, int]:
    """One configuration's training step: tokens/s, achieved FLOP/s, the matmul peak, steps timed, parameters."""
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, tokenizer, corpus, None, out, device="cpu", show_progress=False)
        durations = timed_repeats(trainer.train_step, args.steps, args.warmup, args.max_seconds)
    step_tokens = config.optim.batch_size * config.optim.grad_accum * config.data.context_length
    tokens_per_s = step_tokens / statistics.median(durations)
    achieved = tokens_per_s * model_flops_per_token(trainer)
    return tokens_per_s, achieved, matmul_peak(precision), len(durations), trainer.model.num_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="char-small")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=60, help="stop timing a precision after this long")
    parser.add_argument("--vary", metavar="KEY=A,B,...", help="measure each of these values of one setting, side by side")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    variants = [[]]
    if args.vary:
        key, equals, values = args.vary.partition("=")
        if not equals or not values:
            parser.error(f"--vary takes KEY=A,B,... (e.g. model.dropout=0,0.1), got {args.vary!r}")
        variants = [[f"{key}={value}"] for value in values.split(",")]

    tokenizer = CharTokenizer.from_texts([ALPHABET])
    tokens = np.random.default_rng(0).integers(0, len(ALPHABET), 2_000_000).astype(np.uint16)
    corpus = TokenizedCorpus(tokens=tokens, doc_starts=np.zeros(1, dtype=np.int64))
    print(f"machine: {describe_machine()}")
    native = "native" if has_fast_bf16("cpu") else "emulated (no bf16 matrix instructions): precision=auto uses fp32"
    print(f"bf16 on this CPU: {native}")
    rows = {}
    for variant in variants:
        for precision in ("fp32", "bf16"):
            config = load_config(args.preset, overrides=[*args.overrides, *variant, f"optim.precision={precision}"])
            *row, parameters = measure(config, tokenizer, corpus, precision, args)
            rows[(" ".join(variant), precision)] = tuple(row)
            if len(rows) == 1:
                print(f"model: {parameters:,} parameters, preset {args.preset}, "
                      f"batch {config.optim.batch_size} x context {config.data.context_length}, "
                      f"median of up to {args.steps} steps after {args.warmup} warm-up")
    width = max(len("setting"), *(len(setting) for setting, _ in rows)) + 2
    print(f"{'setting':<{width}}{'precision':<10}{'tokens/s':>12}{'model TFLOP/s':>15}{'matmul peak':>13}{'MFU':>8}"
          f"{'steps':>7}")
    for (setting, precision), (tokens_per_s, achieved, peak, steps) in rows.items():
        print(f"{setting or '-':<{width}}{precision:<10}{tokens_per_s:>12,.0f}{achieved / 1e12:>15.3f}{peak / 1e12:>13.3f}"
              f"{achieved / peak:>8.1%}{steps:>7}")
    first = " ".join(variants[0])
    for variant in variants:
        setting = " ".join(variant)
        print(f"bf16 / fp32 training throughput{' with ' + setting if setting else ''}: "
              f"{rows[(setting, 'bf16')][0] / rows[(setting, 'fp32')][0]:.2f}x")
        if setting != first:
            for precision in ("fp32", "bf16"):
                print(f"{setting} / {first} training throughput in {precision}: "
                      f"{rows[(setting, precision)][0] / rows[(first, precision)][0]:.2f}x")

if __name__ == "__main__":
    main()
