"""Block diffusion (BD3-LM): the block-diffusion items of MATH.md."""

from __future__ import annotations

import math

import pytest
import torch

from ddlm.errors import DDLMError
from ddlm.model import ModelConfig, Transformer
from ddlm.processes import BlockDiffusion, MaskedDiffusion, build_schedule
from ddlm.processes.block import training_attention
from tests.helpers import IIDOracle, entropy

PI = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03], dtype=torch.float64)
VOCAB, MASK, EOS, PAD = 12, 9, 10, 11


def tiny_model(context_length: int = 16, seed: int = 0) -> Transformer:
    """A random float64 backbone with peaked predictions (float64: cached and uncached agree to ~1e-15)."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=VOCAB, context_length=context_length, d_model=16, n_layers=2, n_heads=2))
    with torch.no_grad():
        model.embed.weight.mul_(40)
    return model.double().eval()


def block_process(block_size: int, estimator: str = "time", **keywords) -> BlockDiffusion:
    return BlockDiffusion(build_schedule(keywords.pop("schedule", "linear")), mask_id=MASK, pad_id=PAD, eos_id=EOS,
                          block_size=block_size, estimator=estimator, **keywords)


def data(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, MASK, (batch, length), generator=torch.Generator().manual_seed(seed))


# ----- the NELBO -----

@pytest.mark.parametrize("estimator", ["time", "count"])
def test_one_block_is_masked_diffusion(estimator):
    """Block size = context: the same draws give the masked-diffusion NELBO."""
    model, x0 = tiny_model(), data(4, 16)
    masked = MaskedDiffusion(build_schedule("linear"), mask_id=MASK, pad_id=PAD, eos_id=EOS, estimator=estimator)
    block = block_process(16, estimator)
    expected = masked.loss(model, x0, torch.Generator().manual_seed(3))
    got = block.loss(model, x0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-12, atol=0)
    assert got.num_tokens == expected.num_tokens


def test_block_size_one_is_the_autoregressive_nll():
    """Block size 1: each block is one masked token given the clean prefix; the count estimator is then
    exact (k = n = 1, weight 1), so the NELBO equals the next-token NLL computed prefix by prefix."""
    model, x0 = tiny_model(), data(3, 16)
    process = block_process(1, "count")
    got = process.loss(model, x0, torch.Generator().manual_seed(0)).nelbo_sum
    expected = 0.0
    for i in range(x0.shape[1]):
        tokens = torch.cat((x0[:, :i], torch.full((3, 1), MASK)), dim=1)
        causal = torch.ones(i + 1, i + 1, dtype=torch.bool).tril()
        with torch.no_grad():
            last = model(tokens, attention=causal)[:, -1]
        expected -= float(process.log_probs(last).gather(-1, x0[:, i, None]).sum())
    assert got == pytest.approx(expected, rel=1e-6)  # the processes' log-softmax runs in float32


def test_one_pass_attention_equals_block_by_block_computation():
    """Noisy block b from the one-pass [x_t, x_0] input equals block b computed after the clean blocks < b
    went through a KV cache one at a time (each attending to itself and the cache)."""
    model, x0, size = tiny_model(), data(2, 16), 4
    xt = torch.where(torch.rand(x0.shape, generator=torch.Generator().manual_seed(1)) < 0.5, MASK, x0)
    one_pass = model(torch.cat((xt, x0), dim=1), attention=training_attention(16, size),
                     positions=torch.arange(16).repeat(2))
    for b in range(16 // size):
        cache = model.new_cache(2)
        clean = [model(x0[:, c * size : (c + 1) * size], cache=cache) for c in range(b)]
        noisy = model(xt[:, b * size : (b + 1) * size], cache=cache)
        torch.testing.assert_close(one_pass[:, b * size : (b + 1) * size], noisy, rtol=1e-10, atol=1e-10)
        for c, logits in enumerate(clean):
            torch.testing.assert_close(one_pass[:, 16 + c * size : 16 + (c + 1) * size], logits, rtol=1e-10, atol=1e-10)


def test_the_attention_pattern_is_block_causal():
    pattern = training_attention(4, 2).int()
    expected = torch.tensor([  # noisy blocks [0 1][2 3], then clean blocks [4 5][6 7]
        [1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1],
    ])
    assert torch.equal(pattern, expected)


class BlockOracle(IIDOracle):
    """The exact denoiser of i.i.d. tokens, taking the backbone's attention and position arguments."""

    def forward(self, tokens, noise=None, key_mask=None, attention=None, positions=None, cache=None):
        return super().forward(tokens)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_oracle_nelbo_equals_length_times_entropy(schedule):
    """Exact denoiser on i.i.d. data: the block NELBO is L * H(pi) (MATH.md's oracle identity)."""
    length, rows = 16, 20000
    pi = PI.float()
    x0 = torch.multinomial(pi, rows * length, replacement=True, generator=torch.Generator().manual_seed(0))
    x0 = x0.view(rows, length)
    oracle = BlockOracle(pi)
    process = BlockDiffusion(build_schedule(schedule), mask_id=5, pad_id=7, eos_id=6, block_size=4, antithetic=False)
    generator = torch.Generator().manual_seed(1)
    # one NELBO draw per row; the mean over each chunk of 1000 rows, and the error from the chunk means
    means = torch.tensor([process.loss(oracle, chunk, generator).nelbo_sum / len(chunk) for chunk in x0.split(1000)])
    mean, stderr = float(means.mean()), float(means.std() / math.sqrt(len(means)))
    expected = length * entropy(PI)
    assert stderr < 0.01 * expected
    assert abs(mean - expected) < 4 * stderr + 2e-3 * expected, (mean, expected, stderr)


def test_loss_refuses_a_length_that_is_not_a_multiple_of_the_block():
    with pytest.raises(DDLMError, match="multiple of process.block_size"):
        block_process(5).loss(tiny_model(), data(2, 16))


def test_clip_range_is_checked():
    with pytest.raises(DDLMError, match="clip_min < clip_max"):
        block_process(4, clip_min=0.8, clip_max=0.3)


@pytest.mark.parametrize("clip", [{"clip_min": 0.3}, {"clip_max": 0.8}, {"clip_min": 0.3, "clip_max": 0.8}])
def test_a_clip_is_refused_by_the_count_estimator_which_would_ignore_it(clip):
    with pytest.raises(DDLMError, match="count estimator never draws"):
        block_process(4, estimator="count", **clip)


def gradient_variance(process: BlockDiffusion, model: Transformer, x0: torch.Tensor, draws: int) -> float:
    """Total variance over draws of the gradient of the training loss (sum over parameters)."""
    generator = torch.Generator().manual_seed(0)
    gradients = []
    model.train()
    for _ in range(draws):
        model.zero_grad()
        process.loss(model, x0, generator).loss.backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    model.eval()
    return float(torch.stack(gradients).var(dim=0).sum())


def test_clipped_noise_lowers_the_gradient_variance_and_evaluation_uses_the_full_range():
    model, x0 = tiny_model(), data(4, 16)
    full, clipped = block_process(4, antithetic=False), block_process(4, antithetic=False, clip_min=0.3, clip_max=0.8)
    assert gradient_variance(clipped, model, x0, 40) < 0.5 * gradient_variance(full, model, x0, 40)
    model.eval()
    same = [p.loss(model, x0, torch.Generator().manual_seed(5)).nelbo_sum for p in (full, clipped)]
    assert same[0] == same[1]
