"""A small transformer backbone: RMSNorm, rotary positions, SwiGLU, SDPA, tied embeddings.

It knows nothing of diffusion: token ids (and a noise level, which a model without noise
conditioning ignores) in, one vector of vocabulary logits per position out. An optional
key/value cache lets a forward pass process only new positions (one token or a chunk at a
time) after those already seen.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ddlm.model.config import ModelConfig


class NoiseLevelMissing(ValueError):
    """A model conditioned on the noise level was called without one."""


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x scaled by 1 + scale and shifted by shift."""
    return x * (1 + scale) + shift


def rotary_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (length, head_dim // 2)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the head dimension of x: (B, H, L, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class TokenMemory:
    """The token ids written to a cache, kept for a shifted model, which reads the token before each position:
    the next call's first position reads the last one remembered. Needs ``capacity`` and ``length``."""

    capacity: int
    length: int
    tokens: torch.Tensor | None = None  # (B, capacity) the token ids seen

    def remember(self, tokens: torch.Tensor) -> None:
        """Keep the ids of ``tokens`` (B, new), written after ``length`` (a shifted model reads the last one next)."""
        if self.tokens is None:
            self.tokens = tokens.new_zeros((tokens.shape[0], self.capacity))
        self.tokens[:, self.length : self.length + tokens.shape[1]] = tokens

    def previous_token(self) -> torch.Tensor:
        """(B, 1) the id of the token at position ``length - 1``."""
        return self.tokens[:, self.length - 1 : self.length]


def shift_right(tokens: torch.Tensor, start_id: int, cache: TokenMemory | None = None) -> torch.Tensor:
    """The shift (``ModelConfig.shift``): what a shifted model reads at the positions of ``tokens``, the token
    before each one, with ``start_id`` at position 0 (or the cache's last token when ``tokens`` continue a cache)."""
    if cache is not None and cache.length > 0:
        first = cache.previous_token()
    else:
        first = torch.full_like(tokens[:, :1], start_id)
    return torch.cat((first, tokens[:, :-1]), dim=1)


class KVCache(TokenMemory):
    """Keys and values of the positions a model has already processed, per layer.

    ``model(tokens, cache=cache)`` reads ``tokens`` as positions ``cache.length, ...``:
    they attend to the stored positions and to each other (causally in a causal model,
    fully in a bidirectional one, as a prefix cache for blockwise decoding), and their
    keys and values are stored. Lowering ``length`` forgets the last positions, e.g. to
    run a block again against the same prefix. Setting ``keep_to`` beyond the new positions
    keeps the stored positions up to it visible too (a bidirectional model's dual cache:
    the block sees the cached prefix and suffix around it). Storage (batch, heads,
    capacity, head_dim) is allocated on first use in the dtype of the keys, so it follows
    autocast.
    """

    keeps_suffix = True  # positions after the new ones can stay visible (``keep_to``)

    def __init__(self, batch_size: int, n_layers: int, capacity: int):
        self.batch_size = batch_size
        self.capacity = capacity
        self.length = 0
        self.keep_to = 0
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``layer``'s keys and values (B, H, new, D) after ``length``; return all of them so far."""
        end = self.length + keys.shape[2]
        if self.keys[layer] is None:
            shape = (keys.shape[0], keys.shape[1], self.capacity, keys.shape[3])
            self.keys[layer], self.values[layer] = keys.new_empty(shape), values.new_empty(shape)
        cached_keys, cached_values = self.keys[layer], self.values[layer]
        cached_keys[:, :, self.length : end] = keys
        cached_values[:, :, self.length : end] = values
        visible = self.visible(keys.shape[2])
        return cached_keys[:, :, :visible], cached_values[:, :, :visible]

    def visible(self, new: int) -> int:
        """How many stored positions ``new`` positions written after ``length`` attend to."""
        return max(self.length + new, self.keep_to)


def attention_mask(
    causal: bool,
    new: int,
    cached: int,
    key_mask: torch.Tensor | None,
    device: torch.device,
    pattern: torch.Tensor | None = None,
    keys: int | None = None,
) -> tuple[torch.Tensor | None, bool]:
    """SDPA's ``attn_mask`` and ``is_causal`` for ``new`` queries after ``cached`` positions.

    ``keys``: how many keys there are (default cached + new; more with a dual cache's suffix).
    ``key_mask`` (B, keys) marks the keys that exist (False: batch padding);
    ``pattern`` (new, keys) bool, when given, says which keys each query may see.
    """
    keys = cached + new if keys is None else keys
    if key_mask is None and pattern is None:
        if not causal or (cached > 0 and new == 1 and keys == cached + new):
            return None, False
        if cached == 0 and keys == new:
            return None, True
        return torch.ones(new, keys, dtype=torch.bool, device=device).tril(cached), False
    allowed = torch.ones(new, keys, dtype=torch.bool, device=device) if pattern is None else pattern
    if causal:
        allowed = allowed & torch.ones(new, keys, dtype=torch.bool, device=device).tril(cached)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    return allowed, False


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of a scalar noise level followed by a small MLP."""

    def __init__(self, dim: int, frequencies: int = 128):
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        half = self.frequencies // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=noise.device) / half)
        angles = noise.float()[:, None] * 1000.0 * freqs[None]
        features = torch.cat((angles.cos(), angles.sin()), dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))  # float64 in a float64 model


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.causal = config.causal
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: tuple[torch.Tensor | None, bool],
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.store(layer, k, v)
        attn_mask, is_causal = mask
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class SwiGLU(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_up = nn.Linear(config.d_model, 2 * config.mlp_width, bias=False)
        self.down = nn.Linear(config.mlp_width, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm transformer block, with optional adaLN modulation (shift, scale, gate)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SwiGLU(config)
        self.drop = nn.Dropout(config.dropout)
        self.modulation = nn.Linear(config.cond_width, 6 * config.d_model) if config.time_conditioning else None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cond: torch.Tensor | None,
        mask: tuple[torch.Tensor | None, bool],
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        if self.modulation is None:
            x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, mask, cache, layer))
            return x + self.drop(self.mlp(self.mlp_norm(x)))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond)[:, None].chunk(6, dim=-1)
        h = modulate(self.attn_norm(x), shift1, scale1)
        x = x + gate1 * self.drop(self.attn(h, cos, sin, mask, cache, layer))
        return x + gate2 * self.drop(self.mlp(modulate(self.mlp_norm(x), shift2, scale2)))


class Transformer(nn.Module):
    """The ddlm backbone: ``logits = model(tokens, noise)`` with shape (B, L, vocab_size)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("the model config has no vocab_size; set it to the tokenizer's vocab_size")
        if config.shift and config.start_id is None:
            raise ValueError("a shifted model needs start_id, the token it reads at position 0 (the tokenizer's eos_id)")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.noise_embed = NoiseEmbedding(config.cond_width) if config.time_conditioning else None
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.final_modulation = (
            nn.Linear(config.cond_width, 2 * config.d_model) if config.time_conditioning else None
        )
        cos, sin = rotary_tables(config.head_dim, config.context_length, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style initialisation; adaLN modulations start at zero (identity blocks)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for block in self.blocks:
            nn.init.normal_(block.attn.out.weight, std=0.02 / math.sqrt(2 * self.config.n_layers))
            nn.init.normal_(block.mlp.down.weight, std=0.02 / math.sqrt(2 * self.config.n_layers))
            if block.modulation is not None:
                nn.init.zeros_(block.modulation.weight)
                nn.init.zeros_(block.modulation.bias)
        if self.final_modulation is not None:
            nn.init.zeros_(self.final_modulation.weight)
            nn.init.zeros_(self.final_modulation.bias)

    def num_parameters(self, include_embeddings: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total if include_embeddings else total - self.embed.weight.numel()

    @property
    def uses_noise(self) -> bool:
        """Whether the output depends on the noise level (adaLN conditioning); without it the
        noise argument is ignored and equal tokens give equal logits."""
        return self.noise_embed is not None

    @property
    def shifted(self) -> bool:
        """Whether position i reads token i - 1 (``config.shift``): see :meth:`shifted_inputs`."""
        return self.config.shift

    @property
    def context_length(self) -> int:
        """The most positions one forward pass (with its cache) may hold."""
        return self.config.context_length

    def new_cache(self, batch_size: int) -> KVCache:
        """An empty key/value cache for ``batch_size`` sequences of up to context_length positions."""
        return KVCache(batch_size, self.config.n_layers, self.config.context_length)

    def shifted_inputs(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """What a shifted model reads at the positions of ``tokens``: :func:`shift_right` from ``config.start_id``."""
        return shift_right(tokens, self.config.start_id, cache)

    def forward(
        self,
        tokens: torch.Tensor,
        noise: torch.Tensor | None = None,
        cache: KVCache | None = None,
        key_mask: torch.Tensor | None = None,
        attention: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, L, vocab_size) for token ids (B, L) at noise levels ``noise`` (B,).

        ``noise`` is required by a model that ``uses_noise`` and ignored by one that does not.
        With a ``cache``, ``tokens`` are the L positions after the ``cache.length`` stored
        ones; they also attend to those (and to the stored ones up to ``cache.keep_to``), and
        the cache is extended by them. ``key_mask`` (B, keys) bool hides padding positions
        from every query. ``attention``
        (L, cached + L) bool, when given, is the attention pattern: which keys each query
        sees (e.g. block-causal), on top of ``config.causal`` and ``key_mask``.
        ``positions`` (L,) long are the rotary positions of the tokens (default: cached,
        cached + 1, ...); two tokens may share a position, e.g. a noisy and a clean copy.
        """
        if self.config.shift and positions is not None and inputs is None:
            raise ValueError("a shifted model given its own positions needs inputs=: the token each position reads")
        start, length = (cache.length if cache is not None else 0), tokens.shape[1]
        if positions is None:
            if start + length > self.config.context_length:
                after = f" after {start} cached positions" if start else ""
                raise ValueError(
                    f"sequence length {length}{after} exceeds context_length {self.config.context_length}"
                )
            positions = torch.arange(start, start + length, device=tokens.device)
        elif int(positions.max()) >= self.config.context_length:
            raise ValueError(f"position {int(positions.max())} exceeds context_length {self.config.context_length}")
        if cache is not None and tokens.shape[0] != cache.batch_size:
            raise ValueError(
                f"a batch of {tokens.shape[0]} sequences does not fit a cache made for {cache.batch_size}; "
                f"use model.new_cache({tokens.shape[0]})"
            )
        if self.uses_noise and noise is None:
            raise NoiseLevelMissing("this model is conditioned on the noise level: pass noise=")
        cond = F.silu(self.noise_embed(noise)) if self.uses_noise else None
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        keys = cache.visible(length) if cache is not None else length
        mask = attention_mask(self.config.causal, length, start, key_mask, tokens.device, attention, keys)
        if self.config.shift:
            inputs = self.shifted_inputs(tokens, cache) if inputs is None else inputs
            if cache is not None:
                cache.remember(tokens)
        else:
            inputs = tokens
        x = self.embed(inputs)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, cond, mask, cache, layer)
        if cache is not None:
            cache.length = start + length
        x = self.final_norm(x)
        if self.final_modulation is not None:
            x = modulate(x, *self.final_modulation(cond)[:, None].chunk(2, dim=-1))
        return F.linear(x, self.embed.weight)
