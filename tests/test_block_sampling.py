"""Block diffusion's sampler: blocks left to right, any masked policy inside, an exact KV cache."""

from __future__ import annotations

import math

import pytest
import torch

from ddlm import DiffusionPipeline
from ddlm.errors import DDLMError
from ddlm.model import Transformer
from ddlm.families import sampler_steps
from ddlm.samplers import Canvas, SamplerOptions
from ddlm.training import load_config, prepare_training
from tests.test_block import EOS, MASK, PAD, block_process, tiny_model

POLICY_OPTIONS = [
    {"policy": "ancestral"}, {"policy": "ancestral", "remask": "cap", "remask_eta": 0.2}, {"policy": "first-hitting"},
    {"policy": "confidence"}, {"policy": "margin"}, {"policy": "entropy"}, {"policy": "random"},
    {"policy": "left-to-right"}, {"policy": "threshold", "threshold": 0.2}, {"policy": "random", "threshold": 0.15},
]


def canvas_of(rows: list[list[int | None]]) -> Canvas:
    return Canvas.from_rows(rows, MASK, PAD)


def run(model, process, canvas, **options):
    steps = list(sampler_steps(model, process, canvas, SamplerOptions(**{"seed": 0, **options})))
    return steps[-1].tokens, steps[-1].model_calls, steps


# rows of different lengths (padding), a prompt ending inside a block, and 30 positions after it: longer
# than the 16-token context, so the window slides
ROWS = [[1, 2, 3, *[None] * 30], [4, *[None] * 30]]


@pytest.mark.parametrize("options", POLICY_OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_cached_and_uncached_sampling_give_identical_tokens(options, temperature):
    model, process = tiny_model(), block_process(4)
    canvas = canvas_of(ROWS)
    results = [run(model, process, canvas, steps=24, temperature=temperature, use_cache=use_cache, **options)
               for use_cache in (True, False)]
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1] <= results[1][1]
    tokens = results[0][0]
    assert not (tokens == MASK).any()
    assert torch.equal(tokens[canvas.fixed], canvas.tokens[canvas.fixed])


def test_given_tokens_never_change_and_every_step_reveals_only_masks():
    model, process = tiny_model(), block_process(4)
    canvas = canvas_of([[1, 2, None, None, None, 3, None, None]])  # an infill inside the last two blocks
    _, _, steps = run(model, process, canvas, steps=8)
    previous = canvas.tokens.clone()
    for step in steps:
        assert torch.equal(step.tokens[canvas.fixed], canvas.tokens[canvas.fixed])
        assert bool((previous[step.revealed] == MASK).all())
        previous = step.tokens
    assert not (steps[-1].tokens == MASK).any()
    assert steps[-1].noise == 0


def test_given_text_after_the_last_generated_block_is_refused():
    canvas = canvas_of([[None, None, 1, 2, 3, 4, 5, 6]])  # the text from position 4 on is in a later block
    with pytest.raises(DDLMError, match="never seen"):
        run(tiny_model(), block_process(4), canvas)


def test_a_sample_does_not_depend_on_its_batch():
    model, process = tiny_model(), block_process(4)
    together, _, _ = run(model, process, canvas_of(ROWS), steps=16, use_cache=True)
    for row, cells in enumerate(ROWS):
        alone = list(sampler_steps(model, process, canvas_of([cells]), SamplerOptions(seed=0, steps=16), first_row=row))
        assert torch.equal(alone[-1].tokens[0], together[row, : len(cells)])


class EndsEarly(torch.nn.Module):
    """A backbone that strongly prefers end-of-text at every position from column ``start`` of its window."""

    def __init__(self, model: Transformer, start: int):
        super().__init__()
        self.model, self.start = model, start
        self.uses_noise, self.context_length = model.uses_noise, model.context_length

    def new_cache(self, batch_size):
        return self.model.new_cache(batch_size)

    def forward(self, tokens, noise=None, cache=None, key_mask=None, attention=None, positions=None):
        first = cache.length if cache is not None else 0
        logits = self.model(tokens, cache=cache, key_mask=key_mask, attention=attention, positions=positions)
        columns = torch.arange(first, first + tokens.shape[1])
        logits[:, columns >= self.start, EOS] += 1000
        return logits


def test_a_block_that_generates_end_of_text_ends_the_sample():
    model, process = EndsEarly(tiny_model(context_length=32), start=6), block_process(4)
    canvas = canvas_of([[1, *[None] * 19]])
    tokens, calls, _ = run(model, process, canvas, steps=5, temperature=0.0, policy="confidence")
    assert (tokens[0, 6:8] == EOS).all()  # the block holding column 6 is generated...
    assert (tokens[0, 8:] == PAD).all()  # ...and ends the sample: the next three blocks are never sampled
    assert calls == 2
    assert not (tokens == MASK).any()


def test_min_length_keeps_end_of_text_out_of_the_first_positions():
    model, process = EndsEarly(tiny_model(context_length=32), start=0), block_process(4)
    tokens, _, _ = run(model, process, canvas_of([[None] * 12]), steps=12, temperature=0.0, min_length=6)
    assert not (tokens[0, :6] == EOS).any()
    assert (tokens[0, 6:8] == EOS).all() and (tokens[0, 8:] == PAD).all()


def test_sampling_options_of_the_masked_sampler_apply_but_not_its_block_schedule():
    model, process = tiny_model(), block_process(4)
    with pytest.raises(DDLMError, match="no option block_length"):
        run(model, process, canvas_of([[None] * 8]), block_length=4)

def test_the_step_budget_is_shared_by_the_blocks_with_at_least_one_step_each():
    model, process = tiny_model(), block_process(4)
    for steps, calls in ((24, 24), (6, 6), (1, 6)):  # 24 positions in 6 blocks: 4, 1 and (at least) 1 step per block
        _, model_calls, _ = run(model, process, canvas_of([[None] * 24]), steps=steps, use_cache=False,
                                 policy="confidence", min_length=24)  # min_length: no end-of-text
        assert model_calls == calls


def test_training_and_the_pipeline_sample_past_the_context(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    config = load_config("tiny", overrides=["process.name=block", "process.block_size=4", "optim.max_steps=3",
                                            "log.eval_every=0", "log.save_every=0"])
    trainer = prepare_training(config, tmp_path / "run", data=corpus, device="cpu", cache_dir=tmp_path / "cache",
                               show_progress=False)
    assert math.isfinite(trainer.train()["final_valid_nelbo"])
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "run", device="cpu")
    assert pipe.process.name == "block" and pipe.process.block_size == 4
    length = 2 * pipe.context_length + 3  # the window slides past the 32-token context
    output = pipe.sample("the ", num_samples=2, length=length, seed=0, steps=length // 4, min_length=length)
    assert output.tokens.shape == (2, 4 + length)
    assert not (output.tokens == pipe.tokenizer.mask_id).any()
    assert output.model_calls == -(-length // 4)  # one call per generated block (the prompt fills block 0)
