"""A sample does not depend on its batch: each row of a batch equals that row sampled alone, token for token.

For every process, every policy, with and without blocks and caches, and with prompts of
different lengths (so rows are padded), through the pipeline: the samples of a run drawn in
one batch equal those drawn one per batch, and the first equals a run of its prompt alone.
The models are float64, so batched and single-row arithmetic agree far below any gap a
sampler decides on.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ddlm import DiffusionPipeline
from ddlm.families import build_process
from ddlm.processes import Vocabulary
from ddlm.tokenizers import CharTokenizer
from tests.helpers import float64_model

TOKENIZER = CharTokenizer("abcdef")  # ids 0..5, then mask 6, eos 7, pad 8
MIXED_PROMPTS = ["a", "bcd", "", "abcdef"]  # different lengths: every row but the longest is padded
POLICIES = [
    {"policy": "ancestral"}, {"policy": "ancestral", "remask": "cap", "remask_eta": 0.3}, {"policy": "first-hitting"},
    {"policy": "confidence"}, {"policy": "margin"}, {"policy": "entropy"}, {"policy": "random"},
    {"policy": "left-to-right"}, {"policy": "threshold", "threshold": 0.3}, {"policy": "confidence", "entropy_bound": 0.5},
]
BLOCKS_AND_CACHES = [{}, {"prefix_cache": True}, {"block_length": 4}, {"block_length": 4, "prefix_cache": True},
                     {"block_length": 4, "dual_cache": True}]


def name(options: dict[str, Any]) -> str:
    return ",".join(f"{key}={value}" for key, value in options.items()) or "plain"


def pipeline(process: dict[str, Any]) -> DiffusionPipeline:
    model = float64_model(TOKENIZER.vocab_size, causal=process["name"] == "ar")
    return DiffusionPipeline(model, TOKENIZER, build_process(process, Vocabulary.of(TOKENIZER)), precision="fp32")


def assert_rows_sampled_alone(pipe: DiffusionPipeline, prompts: list[str], **arguments: Any) -> None:
    """Every row of ``prompts`` drawn as one batch equals it drawn in a batch of its own, and the first
    row equals a run of its prompt alone; rows differ, so the check sees each row's own draws."""
    arguments = {"length": 8, "steps": 16, "seed": 5, **arguments}  # rows may finish a block before the others
    together = pipe.sample(prompts, batch_size=len(prompts), **arguments)
    one_by_one = pipe.sample(prompts, batch_size=1, **arguments)
    first_alone = pipe.sample(prompts[0], **arguments)
    assert torch.equal(together.tokens, one_by_one.tokens)
    width = first_alone.tokens.shape[1]
    assert torch.equal(together.tokens[:1, :width], first_alone.tokens)
    generated = together.canvas.generated
    assert len({tuple(row[mask].tolist()) for row, mask in zip(together.tokens, generated)}) > 1


@pytest.mark.parametrize("cache", BLOCKS_AND_CACHES, ids=name)
@pytest.mark.parametrize("policy", POLICIES, ids=name)
def test_masked_rows_do_not_depend_on_their_batch(policy, cache):
    assert_rows_sampled_alone(pipeline({"name": "masked"}), MIXED_PROMPTS, **policy, **cache)


@pytest.mark.parametrize("policy", POLICIES, ids=name)
def test_block_diffusion_rows_do_not_depend_on_their_batch(policy):
    assert_rows_sampled_alone(pipeline({"name": "block", "block_size": 4}), MIXED_PROMPTS, **policy)


@pytest.mark.parametrize("method", ["euler", "analytic"])
@pytest.mark.parametrize("graph", ["sedd-absorb", "sedd-uniform"])
def test_sedd_rows_do_not_depend_on_their_batch(graph, method):
    assert_rows_sampled_alone(pipeline({"name": graph}), MIXED_PROMPTS, method=method)


@pytest.mark.parametrize("use_cache", [True, False])
def test_autoregressive_rows_do_not_depend_on_their_batch(use_cache):
    # the autoregressive sampler needs one prompt length per batch
    assert_rows_sampled_alone(pipeline({"name": "ar"}), ["ab", "cd", "ef", "fa"], use_cache=use_cache)


def test_unconditional_samples_do_not_depend_on_the_batch_size():
    """Samples of one prompt: sample i is the same in batches of 4, 3 and 1, also where its neighbours
    finish a block in more steps than it does."""
    pipe = pipeline({"name": "masked"})
    arguments = {"num_samples": 6, "length": 8, "steps": 16, "seed": 1, "block_length": 4}
    runs = [pipe.sample("ab", batch_size=size, **arguments).tokens for size in (4, 3, 1)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert len({tuple(row.tolist()) for row in runs[0]}) > 1
