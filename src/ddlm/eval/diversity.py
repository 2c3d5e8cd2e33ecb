"""Diversity of samples, on token sequences (any tokenizer's ids, or characters of a text).

Low-entropy, repetitive text gets a deceptively good generative perplexity; these numbers
are reported beside it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def unigram_entropy(tokens: Sequence) -> float:
    """Entropy (nats) of the token frequencies of one sample."""
    if not tokens:
        return 0.0
    counts = Counter(tokens)
    total = len(tokens)
    return -sum(c / total * math.log(c / total) for c in counts.values())


def ngrams(tokens: Sequence, n: int) -> list[tuple]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: Sequence[Sequence], n: int) -> float:
    """Distinct n-grams across all samples divided by all n-grams (1.0: nothing repeats)."""
    grams = [gram for sample in samples for gram in ngrams(sample, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(tokens: Sequence, n: int = 4) -> float:
    """Fraction of a sample's n-grams that already occurred earlier in it."""
    grams = ngrams(tokens, n)
    seen: set[tuple] = set()
    repeated = 0
    for gram in grams:
        repeated += gram in seen
        seen.add(gram)
    return repeated / len(grams) if grams else 0.0
