"""How many of a model's generated words are real: the share of generated words that occur in
the training text, for a few sampler settings, next to the samples' unigram entropy.

    python experiments/real_words.py --model runs/shakespeare
    python experiments/real_words.py --model shakespeare-block --seeds 0 1 2 3 --only "temperature 0.8"

A word is a maximal run of letters and apostrophes, compared in lower case. Character-level
models write many near-words ("shausir") that this counts as not real. The last row scores
random stretches of the text itself (words cut at the edges count as not real), the ceiling.
Settings the model's sampler does not take are left out (policies for the autoregressive model,
LLaDA-style blocks for block diffusion). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics

from ddlm import DiffusionPipeline
from ddlm.data import builtin_text
from ddlm.device import describe_machine
from ddlm.eval.diversity import unigram_entropy
from ddlm.families import get_family
from ddlm.samplers import SamplerOptions

WORD = re.compile(r"[A-Za-z']+")

SETTINGS = {
    "ancestral, temperature 1": {},
    "ancestral, top-p 0.9": {"top_p": 0.9},
    "ancestral, temperature 0.8": {"temperature": 0.8},
    "ancestral, temperature 0.5": {"temperature": 0.5},
    "confidence, blocks of 32": {"policy": "confidence", "block_length": 32},
    "confidence, one token per step": {"policy": "confidence", "steps": None},
    "confidence, one token per step, temperature 0.8": {"policy": "confidence", "steps": None, "temperature": 0.8},
    "left to right, one token per step, temperature 0.8": {"policy": "left-to-right", "steps": None, "temperature": 0.8},
}


def words(text: str) -> list[str]:
    """The words of ``text``, lower case, without surrounding apostrophes."""
    return [word.strip("'").lower() for word in WORD.findall(text) if word.strip("'")]


def real_word_share(texts: list[str], vocabulary: set[str]) -> float:
    """Fraction of the words of ``texts`` that are in ``vocabulary``."""
    generated = [word for text in texts for word in words(text)]
    return sum(word in vocabulary for word in generated) / max(len(generated), 1)


def sample_figures(pipe: DiffusionPipeline, options: dict, args: argparse.Namespace, seed: int,
                   vocabulary: set[str]) -> tuple[float, float]:
    """Real-word share and mean unigram entropy of ``args.num_samples`` samples under ``options`` and ``seed``."""
    # The options whole, so that what a row leaves unset takes the declared default, not the model's.
    steps = options.get("steps", args.steps) or args.length  # None: one per token
    output = pipe.sample(args.prompt, SamplerOptions.build(**{**options, "steps": steps, "seed": seed}),
                         num_samples=args.num_samples, length=args.length)
    generated = [pipe.decode(output, row)[len(args.prompt):] for row in range(args.num_samples)]
    entropy = statistics.mean(unigram_entropy(output.tokens[row][output.canvas.generated[row]].tolist())
                              for row in range(args.num_samples))
    return real_word_share(generated, vocabulary), entropy


def spread(values: list[float], percent: bool = False) -> str:
    """The mean of ``values``, with its standard error where there are several."""
    scale, digits, unit = (100, 1, "%") if percent else (1, 3, "")
    text = f"{statistics.mean(values) * scale:.{digits}f}{unit}"
    if len(values) > 1:
        text += f" ± {statistics.stdev(values) / len(values) ** 0.5 * scale:.{digits}f}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", help="the training text: its words are the real ones (default: the built-in corpus)")
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("-n", "--num-samples", type=int, default=16)
    parser.add_argument("--length", type=int, default=224, help="generated tokens (a multiple of 32, for the block rows)")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one batch of samples per seed; several give the mean and its standard error over seeds")
    parser.add_argument("--only", nargs="+", help="the settings whose names contain one of these texts")
    args = parser.parse_args()

    if args.data is None:
        corpus = builtin_text("shakespeare")
    else:
        with open(args.data, encoding="utf-8") as handle:
            corpus = handle.read()
    vocabulary = set(words(corpus))
    pipe = DiffusionPipeline.from_pretrained(args.model)
    print(f"{args.num_samples} samples of {args.length} tokens per seed, seeds {args.seeds}, {args.steps} steps, "
          f"prompt {args.prompt!r}; machine: {describe_machine()}\n")
    print("| sampler | real words | unigram entropy (nats) |\n|---|---|---|")
    offered = get_family(pipe.process.name).offered()
    for name, options in SETTINGS.items():
        if not set(options) <= set(offered):
            continue  # a setting this model's sampler does not take (the AR model has no policy)
        if args.only and not any(text in name for text in args.only):
            continue
        shares, entropies = zip(*(sample_figures(pipe, options, args, seed, vocabulary) for seed in args.seeds))
        print(f"| {name} | {spread(list(shares), percent=True)} | {spread(list(entropies))} |", flush=True)
    starts = random.Random(args.seeds[0]).sample(range(len(corpus) - args.length), args.num_samples)
    stretches = [corpus[start : start + args.length] for start in starts]
    entropy = statistics.mean(unigram_entropy(pipe.tokenizer.encode(text)) for text in stretches)
    print(f"| real text (reference) | {real_word_share(stretches, vocabulary):.1%} | {entropy:.3f} |")


if __name__ == "__main__":
    main()
