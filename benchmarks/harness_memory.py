"""Peak memory and time of left-to-right scoring over a large vocabulary, rows split over calls or not.

    python benchmarks/harness_memory.py                       # 96 tokens, a GPT-2-sized vocabulary
    python benchmarks/harness_memory.py --tokens 64 --vocab 32000

A random one-layer masked model with a vocabulary of ``--vocab`` ids scores a continuation of
``--tokens`` tokens left to right (``estimator=left_to_right``: one row per token, each row the whole
canvas) through the harness's Scorer, once with the rows split over calls by ``LOGITS_PER_CALL``
(the default) and once with every row in one call. Each setting runs ``--repeats`` times in a fresh
process; the peak resident memory and the median time are printed side by side with their ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from ddlm import DiffusionPipeline
from ddlm.device import describe_machine
from ddlm.eval import harness
from ddlm.model import ModelConfig, Transformer
from ddlm.processes import MaskedDiffusion, build_schedule
from ddlm.tokenizers import CharTokenizer

UNSPLIT = 2**62  # a LOGITS_PER_CALL no batch reaches


def score_once(tokens: int, vocab: int, logits_per_call: int) -> dict[str, float]:
    """Score one continuation left to right in this process: seconds and the log-likelihood."""
    tokenizer = CharTokenizer([chr(0x4E00 + i) for i in range(vocab - 3)])  # ids 0..vocab-4, then the specials
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=tokens, d_model=64, n_layers=1, n_heads=2)
    process = MaskedDiffusion(build_schedule("linear"), mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id,
                              eos_id=tokenizer.eos_id)
    pipe = DiffusionPipeline(Transformer(config).eval(), tokenizer, process, precision="fp32")
    continuation = torch.randint(0, vocab - 3, (tokens,), generator=torch.Generator().manual_seed(1)).tolist()
    harness.LOGITS_PER_CALL = logits_per_call
    start = time.perf_counter()
    value = harness.Scorer(pipe, estimator="left_to_right").score([([], continuation)], batch_size=1)[0][0]
    return {"seconds": time.perf_counter() - start, "log_likelihood": value}


def run_in_child(tokens: int, vocab: int, logits_per_call: int) -> dict[str, float]:
    """``score_once`` in a fresh process, with that process's peak resident memory in MiB."""
    code = (f"import json, resource, sys; sys.path.insert(0, {sys.path[0]!r}); import harness_memory as h; "
            f"r = h.score_once({tokens}, {vocab}, {logits_per_call}); "
            "r['peak_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; print(json.dumps(r))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=96, help="continuation length (rows and canvas width)")
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(describe_machine())
    print(f"left to right, {args.tokens} tokens, vocabulary {args.vocab:,}: "
          f"{args.tokens * args.tokens * args.vocab * 4 / 2**30:.2f} GiB of fp32 scores in one call")
    settings = {"split (LOGITS_PER_CALL)": harness.LOGITS_PER_CALL, "one call": UNSPLIT}
    results = {name: [run_in_child(args.tokens, args.vocab, limit) for _ in range(args.repeats)]
               for name, limit in settings.items()}
    reference = None
    for name, runs in results.items():
        peak = max(run["peak_mib"] for run in runs)
        seconds = statistics.median(run["seconds"] for run in runs)
        reference = reference or (peak, seconds)
        print(f"{name:>24}: peak {peak:8.0f} MiB ({peak / reference[0]:.2f}x)  median {seconds:6.2f} s "
              f"({seconds / reference[1]:.2f}x)  log p {runs[0]['log_likelihood']:.4f}")


if __name__ == "__main__":
    main()
