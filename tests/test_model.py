"""The backbone: attention masks, rotary positions, noise conditioning, parameter count."""

from __future__ import annotations

import pytest
import torch

from ddlm.errors import DDLMError
from ddlm.model import ModelConfig, Transformer
from ddlm.model.transformer import apply_rotary, rotary_tables


def model(**overrides) -> Transformer:
    torch.manual_seed(0)
    config = dict(vocab_size=11, context_length=16, d_model=32, n_layers=2, n_heads=4)
    return Transformer(ModelConfig(**{**config, **overrides})).eval()


def test_bidirectional_model_sees_the_future_and_causal_does_not():
    tokens = torch.randint(0, 11, (1, 10))
    changed = tokens.clone()
    changed[0, 7] = (tokens[0, 7] + 1) % 11
    for causal in (False, True):
        net = model(causal=causal)
        with torch.no_grad():
            before, after = net(tokens), net(changed)
        past_unchanged = torch.allclose(before[0, :7], after[0, :7], atol=1e-6)
        assert past_unchanged == causal


def test_rotary_attention_depends_on_relative_position_only():
    cos, sin = rotary_tables(8, 32, 10000.0)
    q, k = torch.randn(8), torch.randn(8)

    def score(i: int, j: int) -> float:
        qi = apply_rotary(q.view(1, 1, 1, 8), cos[i : i + 1], sin[i : i + 1]).flatten()
        kj = apply_rotary(k.view(1, 1, 1, 8), cos[j : j + 1], sin[j : j + 1]).flatten()
        return float(qi @ kj)

    assert score(3, 1) == pytest.approx(score(12, 10), rel=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)


def test_noise_conditioning_starts_as_identity_and_then_matters():
    net = model(time_conditioning=True)
    tokens = torch.randint(0, 11, (2, 8))
    with torch.no_grad():
        a, b = net(tokens, torch.tensor([0.1, 0.1])), net(tokens, torch.tensor([0.9, 0.9]))
    assert torch.equal(a, b)  # zero-initialised modulation
    torch.nn.init.normal_(net.blocks[0].modulation.weight, std=0.1)
    with torch.no_grad():
        a, b = net(tokens, torch.tensor([0.1, 0.1])), net(tokens, torch.tensor([0.9, 0.9]))
    assert not torch.allclose(a, b)
    assert net.uses_noise
    with pytest.raises(ValueError, match="noise"):
        net(tokens)


def test_a_model_without_noise_conditioning_ignores_the_noise_level():
    """Processes pass the noise level always; only a conditioned model reads it."""
    net = model()
    tokens = torch.randint(0, 11, (2, 8))
    with torch.no_grad():
        plain, low, high = net(tokens), net(tokens, torch.tensor([0.1, 0.2])), net(tokens, torch.tensor([0.9, 1.0]))
    assert not net.uses_noise
    assert torch.equal(plain, low) and torch.equal(plain, high)


def test_parameter_count_matches_the_architecture():
    d, hidden, vocab, layers = 32, 128, 11, 2
    net = model(mlp_hidden=hidden)
    per_block = 3 * d * d + d * d + 2 * d * hidden + hidden * d + 2 * d  # qkv, out, SwiGLU, two norms
    assert net.num_parameters() == vocab * d + layers * per_block + d  # tied embedding, final norm
    assert net.num_parameters(include_embeddings=False) == layers * per_block + d


def test_output_head_is_tied_to_the_embedding():
    net = model()
    captured = {}
    net.final_norm.register_forward_hook(lambda module, args, output: captured.update(hidden=output))
    tokens = torch.randint(0, 11, (1, 5))
    with torch.no_grad():
        logits = net(tokens)
    torch.testing.assert_close(logits, captured["hidden"] @ net.embed.weight.T)
    assert [name for name, p in net.named_parameters() if p.shape == (11, 32)] == ["embed.weight"]


def test_invalid_shapes_are_rejected():
    with pytest.raises(DDLMError, match="divisible"):
        ModelConfig(vocab_size=10, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="context_length"):
        model()(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("chunks", [[1] * 16, [5, 1, 1, 3, 1, 4, 1]], ids=["token by token", "prompt and chunks"])
def test_cached_decoding_matches_the_full_forward_pass(chunks):
    net = model(causal=True)
    tokens = torch.randint(0, 11, (3, 16))
    cache = net.new_cache(batch_size=3)
    with torch.no_grad():
        full = net(tokens)
        starts = [sum(chunks[:i]) for i in range(len(chunks) + 1)]
        pieces = [net(tokens[:, a:b], cache=cache) for a, b in zip(starts, starts[1:])]
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)
        assert cache.length == 16
        cache.length = 6  # forget the last positions and run them again
        torch.testing.assert_close(net(tokens[:, 6:], cache=cache), full[:, 6:], atol=1e-5, rtol=0)


def test_cache_overflow_and_batch_mismatch_are_clear_errors():
    net = model(causal=True)
    cache = net.new_cache(batch_size=2)
    with torch.no_grad():
        net(torch.zeros(2, 16, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="after 16 cached positions exceeds context_length 16"):
            net(torch.zeros(2, 1, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match=r"new_cache\(3\)"):
            net(torch.zeros(3, 1, dtype=torch.long), cache=net.new_cache(batch_size=2))


@pytest.mark.parametrize("causal", [False, True])
def test_key_mask_hides_padding_exactly(causal):
    net = model(causal=causal)
    tokens = torch.randint(0, 11, (1, 6))
    alone = net(tokens)
    padded = torch.cat((tokens, torch.full((1, 5), 3)), dim=1)
    key_mask = torch.arange(11)[None, :] < 6
    torch.testing.assert_close(net(padded, key_mask=key_mask)[:, :6], alone, atol=1e-5, rtol=0)
    leaks = not torch.allclose(net(padded)[:, :6], alone, atol=1e-3)  # without the mask, later padding is seen
    assert leaks != causal  # ... by a bidirectional model only: a causal one never looks right


def test_key_mask_with_a_prefix_cache_matches_the_full_pass():
    net = model()
    tokens = torch.randint(0, 11, (2, 10))
    key_mask = torch.tensor([[True] * 10, [True] * 7 + [False] * 3])
    full = net(tokens, key_mask=key_mask)
    cache = net.new_cache(2)
    net(tokens, cache=cache, key_mask=key_mask)
    cache.length = 4
    torch.testing.assert_close(net(tokens[:, 4:], cache=cache, key_mask=key_mask), full[:, 4:], atol=1e-5, rtol=0)
