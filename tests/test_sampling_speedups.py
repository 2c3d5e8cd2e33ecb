"""Entropy-bounded decoding (EB-sampler) and the dual key/value cache (Fast-dLLM)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddlm.errors import DDLMError
from ddlm.samplers import Canvas, SamplerOptions
from ddlm.samplers.policies import entropy_bounded_counts, predictive_entropy, ranking
from tests import test_block as block_tests
from tests.helpers import run_steps
from tests.test_sampling_policies import GREEDY, MASK, canvas, process, prompt_canvas, tiny_model

# ----- entropy-bounded decoding -----


def brute_force_counts(scores: torch.Tensor, candidates: torch.Tensor, entropy: torch.Tensor, bound: float) -> list[int]:
    """The largest k such that the k best-scored candidates' entropies, summed less their largest, are <= bound."""
    counts = []
    for row in range(scores.shape[0]):
        ranked = sorted((i for i in range(scores.shape[1]) if candidates[row, i]), key=lambda i: -float(scores[row, i]))
        best = 0
        for k in range(1, len(ranked) + 1):
            chosen = [float(entropy[row, i]) for i in ranked[:k]]
            if sum(chosen) - max(chosen) <= bound:
                best = k
        counts.append(best)
    return counts


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("bound", [0.0, 0.3, 1.0, 4.0])
def test_entropy_bounded_count_is_the_longest_run_within_the_bound(seed, bound):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(4, 12, generator=generator, dtype=torch.float64)
    candidates = torch.rand(4, 12, generator=generator) < 0.7
    candidates[0] = False  # a row with nothing left to reveal
    entropy = torch.rand(4, 12, generator=generator, dtype=torch.float64) * 1.5
    entropy[1, :6] = 0.0  # certain positions cost nothing
    counts = entropy_bounded_counts(ranking(scores, candidates), candidates, entropy, bound)
    assert counts.tolist() == brute_force_counts(scores, candidates, entropy, bound)
    assert counts[0] == 0 and bool((counts[1:] >= 1).all())


def test_predictive_entropy_matches_the_formula():
    probs = torch.tensor([[0.5, 0.25, 0.25, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    expected = [-(0.5 * torch.log(torch.tensor(0.5)) + 0.5 * torch.log(torch.tensor(0.25))).item(), 0.0]
    assert predictive_entropy(probs.log()).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("options", [{"seed": 3}, {"seed": 5, **GREEDY}, {"seed": 1, "block_length": 4}])
def test_a_zero_bound_reveals_one_position_per_step_like_the_confidence_policy(options):
    model, length = tiny_model(seed=1), 16
    confidence = run_steps(model, process(), canvas=prompt_canvas(3, [1, 2], length), steps=length,
                           policy="confidence", **options)
    bounded = run_steps(model, process(), canvas=prompt_canvas(3, [1, 2], length), steps=length,
                        policy="confidence", entropy_bound=0.0, **options)
    assert torch.equal(bounded.tokens, confidence.tokens)
    assert bounded.model_calls == confidence.model_calls == length
    assert all(int(step.revealed.sum(dim=1).max()) == 1 for step in bounded.trace)


class CertainModel(nn.Module):
    """Puts (nearly) all probability on token (position mod 5) everywhere: a model sure of every position."""

    uses_noise = False

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, tokens, noise=None, cache=None, key_mask=None):
        logits = torch.full((*tokens.shape, self.vocab), -60.0)
        logits[..., MASK] = 0.0  # the process forbids MASK; its logit must not matter
        positions = torch.arange(tokens.shape[1]) % 5
        logits.scatter_(-1, positions.expand(tokens.shape)[..., None], 60.0)
        return logits + self.anchor


def test_a_model_sure_of_every_position_fills_the_canvas_in_one_call():
    model = CertainModel(vocab=MASK + 3)
    out = run_steps(model, process(), canvas=prompt_canvas(2, [], 20), steps=20, policy="confidence",
                    entropy_bound=1e-6)
    assert out.model_calls == 1 and len(out.trace) == 1
    assert out.tokens[0].tolist() == [i % 5 for i in range(20)]


def test_larger_bounds_take_fewer_calls_and_still_fill_everything():
    model, calls = tiny_model(seed=2), []
    for bound in (0.0, 0.5, 2.0, 8.0):
        out = run_steps(model, process(), canvas=prompt_canvas(4, [1], 24), steps=24, policy="margin",
                        entropy_bound=bound, seed=0)
        assert not (out.tokens == MASK).any()
        calls.append(out.model_calls)
    assert calls == sorted(calls, reverse=True) and calls[0] == 24 and calls[-1] < 24


def test_the_entropy_bound_also_drives_block_diffusion():
    model, block = block_tests.tiny_model(context_length=24, seed=2), block_tests.block_process(4)
    start = Canvas.from_prompts([[1, 2, 3, 4]] * 2, 16, block_tests.MASK, block_tests.PAD)
    exact = run_steps(model, block, canvas=start, steps=16, policy="confidence", min_length=16)
    bounded = run_steps(model, block, canvas=start, steps=16, policy="confidence", entropy_bound=3.0, min_length=16)
    assert not (bounded.tokens == block_tests.MASK).any() and bounded.model_calls < exact.model_calls


def test_an_entropy_bound_needs_a_ranked_policy_and_a_finite_bound():
    with pytest.raises(DDLMError, match="needs a ranked policy.*set policy to confidence"):
        SamplerOptions(entropy_bound=0.5)
    with pytest.raises(DDLMError, match="entropy_bound must be"):
        SamplerOptions(policy="confidence", entropy_bound=float("nan"))
    with pytest.raises(DDLMError, match="entropy_bound must be"):
        SamplerOptions(policy="confidence", entropy_bound=-1)


# ----- the dual cache -----


class Recorder(nn.Module):
    """Passes calls to ``model`` and records the width of each call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.widths = model, []
        self.uses_noise = model.uses_noise

    def new_cache(self, batch_size: int):
        return self.model.new_cache(batch_size)

    def forward(self, tokens, noise=None, cache=None, key_mask=None):
        self.widths.append(tokens.shape[1])
        return self.model(tokens, noise, cache=cache, key_mask=key_mask)


@pytest.mark.parametrize("n_layers", [1, 3])
def test_a_dual_cached_call_on_an_unchanged_canvas_equals_the_full_pass(n_layers):
    model = tiny_model(n_layers=n_layers, seed=6)
    tokens = torch.randint(0, MASK + 1, (2, 20), generator=torch.Generator().manual_seed(0))
    key_mask = torch.ones(2, 20, dtype=torch.bool)
    key_mask[1, 17:] = False  # a padded row
    with torch.no_grad():
        full = model(tokens, key_mask=key_mask)
        cache = model.new_cache(2)
        model(tokens, cache=cache, key_mask=key_mask)
        cache.length, cache.keep_to = 8, 20
        block = model(tokens[:, 8:12], cache=cache, key_mask=key_mask)
    torch.testing.assert_close(block, full[:, 8:12], rtol=1e-5, atol=1e-5)


def test_the_dual_cache_is_exact_for_a_one_layer_model_and_feeds_only_the_block():
    """With one layer, keys/values depend on each position's own token: outside the block none changes."""
    model = tiny_model(n_layers=1)
    rows = [[1, 2, *[None] * 16], [3, *[None] * 16, 4]]
    plain = run_steps(model, process(), canvas=canvas(rows), steps=8, policy="confidence", block_length=4, seed=2)
    recorder = Recorder(model)
    dual = run_steps(recorder, process(), canvas=canvas(rows), steps=8, policy="confidence", block_length=4,
                     seed=2, dual_cache=True)
    assert torch.equal(plain.tokens, dual.tokens)
    # the rows' blocks start at different columns: each row is called with its own boundaries, a full
    # call opening each block, then only the block's 4 columns
    assert recorder.widths == [18, 18, 4, 4] * 4


def test_the_dual_cache_runs_with_every_ranked_policy_and_fills_the_canvas():
    model = tiny_model(n_layers=3, seed=4)
    for policy in ("confidence", "threshold", "random"):
        runs = [run_steps(model, process(), canvas=prompt_canvas(4, [1], 24), steps=12, policy=policy,
                          block_length=8, seed=0, **cache) for cache in ({}, {"prefix_cache": True},
                                                                       {"dual_cache": True})]
        assert all(not (run.tokens == MASK).any() for run in runs)
        assert runs[2].tokens[:, 0].eq(1).all()


def test_the_dual_cache_needs_blocks():
    with pytest.raises(DDLMError, match="dual cache.*block_length"):
        SamplerOptions(dual_cache=True)


# ----- torch.compile -----


@pytest.mark.slow
def test_a_compiled_pipeline_samples_what_the_eager_one_does():
    """torch.compile changes the arithmetic's order only: the same sampler gives (almost) the same tokens."""
    from ddlm import DiffusionPipeline
    from tests.servers import trained_models

    path = trained_models()["tiny-masked"]
    eager = DiffusionPipeline.from_pretrained(path, precision="fp32")
    compiled = DiffusionPipeline.from_pretrained(path, precision="fp32", compile_model=True)
    assert compiled.sampling_model is not compiled.model and eager.sampling_model is eager.model
    options = {"num_samples": 2, "length": 16, "steps": 8, "seed": 4}
    expected, got = eager.sample("ROMEO:", **options), compiled.sample("ROMEO:", **options)
    assert got.model_calls == expected.model_calls
    assert float((got.tokens == expected.tokens).double().mean()) >= 0.9
    assert set(compiled.model.state_dict()) == set(eager.model.state_dict())  # saving sees the plain model
