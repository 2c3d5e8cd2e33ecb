"""Categorical sampling and the ancestral sampler, against exact distributions."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from ddlm.errors import DDLMError
from ddlm.model import ModelConfig, Transformer
from ddlm.processes import MaskedDiffusion, build_schedule
from ddlm.samplers import SamplerOptions, filter_logits, sample_categorical
from tests.helpers import IIDOracle, prefix_canvas, run_steps

# A distribution with a long low-probability tail: float32 Gumbel noise loses such tails.
TAIL = torch.tensor([0.6, 0.25, 0.1, 0.04, 0.009, 0.0009, 0.0001], dtype=torch.float64)


def draw(logits: torch.Tensor, options: SamplerOptions, n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    tokens = sample_categorical(logits.expand(n, -1), options, generator)
    return torch.bincount(tokens, minlength=logits.shape[-1]).double()


def assert_matches(counts: torch.Tensor, probs: torch.Tensor) -> None:
    keep = probs > 0
    assert counts[~keep].sum() == 0, "a token outside the support was sampled"
    result = chisquare(counts[keep].numpy(), (probs[keep] / probs[keep].sum() * counts.sum()).numpy())
    assert result.pvalue > 1e-4, (counts, probs)


def test_frequencies_match_the_distribution_including_its_tail():
    counts = draw(TAIL.log().float(), SamplerOptions(), 400_000)
    assert_matches(counts, TAIL)
    assert counts[-1] > 0  # the 1e-4 token shows up (about 40 times)


def test_temperature_scales_logits():
    counts = draw(TAIL.log().float(), SamplerOptions(temperature=2.0), 200_000)
    assert_matches(counts, (TAIL.log() / 2).softmax(-1))


def test_top_k_keeps_the_k_most_likely_renormalised():
    counts = draw(TAIL.log().float(), SamplerOptions(top_k=3), 200_000)
    expected = torch.where(torch.arange(7) < 3, TAIL, torch.zeros_like(TAIL))
    assert_matches(counts, expected)


@pytest.mark.parametrize("top_p, kept", [(0.6, 1), (0.8, 2), (0.95, 3), (0.99, 4), (1.0, 7)])
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p, kept):
    filtered = filter_logits(TAIL.log(), SamplerOptions(top_p=top_p))
    assert torch.isfinite(filtered).sum().item() == kept
    assert torch.isfinite(filtered[:kept]).all()


def test_sampling_is_float64_and_temperature_zero_is_argmax():
    assert filter_logits(torch.zeros(3), SamplerOptions()).dtype == torch.float64
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    assert sample_categorical(logits, SamplerOptions(temperature=0)).tolist() == [1, 0]


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_options_are_rejected(bad):
    with pytest.raises(DDLMError):
        SamplerOptions(**bad)


PI = torch.tensor([0.4, 0.3, 0.2, 0.1])
MASK, EOS, PAD = 4, 5, 6


def process(schedule: str = "linear") -> MaskedDiffusion:
    return MaskedDiffusion(build_schedule(schedule), mask_id=MASK, pad_id=PAD)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "geometric"])
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 50])
def test_no_mask_survives_the_last_step(schedule, steps):
    out = run_steps(IIDOracle(PI), process(schedule), canvas=prefix_canvas(4, 30), steps=steps,
                           seed=steps)
    assert not (out.tokens == MASK).any()


def test_masked_sampler_reproduces_the_oracle_distribution():
    out = run_steps(IIDOracle(PI), process("cosine"), canvas=prefix_canvas(200, 50), steps=16,
                           seed=0)
    counts = torch.bincount(out.tokens.flatten(), minlength=7).double()
    assert_matches(counts, torch.cat([PI.double(), torch.zeros(3, dtype=torch.float64)]))


def test_prompt_is_never_changed():
    prompt = [3, 3, 0, 1]
    out = run_steps(IIDOracle(PI), process(), canvas=prefix_canvas(8, 10, prompt), steps=5,
                           seed=0)
    assert out.tokens.shape == (8, 14)
    assert (out.tokens[:, :4] == torch.tensor(prompt)).all()


def tiny_model(time_conditioning: bool = False) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=7, context_length=32, d_model=16, n_layers=1, n_heads=2,
                         time_conditioning=time_conditioning)
    return Transformer(config).eval()


def test_cached_sampler_gives_identical_samples_with_fewer_calls():
    model = tiny_model()
    runs = {
        cache: run_steps(model, process(), canvas=prefix_canvas(3, 12, [1]), steps=64,
                                seed=5, use_cache=cache)
        for cache in (True, False)
    }
    assert torch.equal(runs[True].tokens, runs[False].tokens)
    assert runs[False].model_calls == 64
    assert runs[True].model_calls < 64


def test_time_conditioned_model_is_called_every_step():
    out = run_steps(tiny_model(time_conditioning=True), process(), canvas=prefix_canvas(2, 8), steps=20,
                           seed=0)
    assert out.model_calls == 20


def test_trace_records_each_reveal_once_and_ends_at_the_output():
    out = run_steps(tiny_model(), process(), canvas=prefix_canvas(2, 12, [2, 2]), steps=10,
                           seed=1)
    assert len(out.trace) == 10
    assert torch.equal(out.trace[-1].tokens, out.tokens)
    reveals = torch.stack([step.changed for step in out.trace]).sum(dim=0)
    assert (reveals[:, :2] == 0).all() and (reveals[:, 2:] == 1).all()
    masked_counts = [int((step.tokens == MASK).sum()) for step in out.trace]
    assert masked_counts == sorted(masked_counts, reverse=True)


def test_zero_steps_is_an_error():
    with pytest.raises(DDLMError, match="steps"):
        run_steps(tiny_model(), process(), canvas=prefix_canvas(1, 4), steps=0)


def test_a_sample_does_not_depend_on_the_batch_it_is_drawn_in():
    model = tiny_model()
    alone = run_steps(model, process(), canvas=prefix_canvas(1, 12), steps=8, seed=3)
    batch = run_steps(model, process(), canvas=prefix_canvas(4, 12), steps=8, seed=3)
    assert torch.equal(alone.tokens[0], batch.tokens[0])
    assert not torch.equal(batch.tokens[0], batch.tokens[1])
