"""Small stand-in models for tests: exact denoisers for toy distributions, and a float64 backbone that is the same on every CPU."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from ddlm.model import ModelConfig, Transformer
from ddlm.families import sampler_steps
from ddlm.samplers import Canvas, SamplerOptions, SamplerStep


class IIDOracle(nn.Module):
    """The exact denoiser for sequences of i.i.d. tokens with marginal ``pi``.

    For such data p(x0_i | x_t) = pi at every masked position, whatever x_t and t.
    Special ids (the last three: mask, eos, pad) get probability zero.
    """

    uses_noise = False  # the noise level changes nothing: samplers may reuse its output

    def __init__(self, pi: torch.Tensor, context_length: int = 64):
        super().__init__()
        vocab = len(pi) + 3
        self.config = ModelConfig(vocab_size=vocab, context_length=context_length, d_model=8, n_layers=1, n_heads=2)
        logits = torch.full((vocab,), -torch.inf)
        logits[: len(pi)] = pi.log()
        self.register_buffer("logits", logits)
        self.anchor = nn.Parameter(torch.zeros(()))  # samplers read the device from a parameter
        self.calls = 0

    def forward(self, tokens: torch.Tensor, noise: torch.Tensor | None = None, key_mask=None) -> torch.Tensor:
        self.calls += 1
        return self.logits.expand(*tokens.shape, -1).clone()


def float64_model(vocab_size: int, causal: bool = False, time_conditioning: bool = False, seed: int = 0,
                  context_length: int = 32, embedding_scale: float = 5.0, layer_scale: float = 10.0) -> Transformer:
    """A small random backbone in float64, the same on every CPU and in every batch.

    Its weights are drawn in float64 (torch's float32 normal draws differ between CPUs' vector
    instructions); float64 arithmetic keeps rounding (~1e-16) far below the gaps between the scores
    a sampler ranks. Scaled-up embeddings make its predictions far from uniform, and scaled-up
    layers make positions depend on each other (so a stale cache changes its predictions). A
    time-conditioned model embeds the noise level in float32, as the backbone does; its adaLN
    layers start at zero.
    """
    config = ModelConfig(vocab_size=vocab_size, context_length=context_length, d_model=16, n_layers=2, n_heads=2,
                         causal=causal, time_conditioning=time_conditioning)
    model = Transformer(config).double()
    torch.manual_seed(seed)
    model.reset_parameters()
    with torch.no_grad():
        model.embed.weight.mul_(embedding_scale)
        for weight in model.blocks.parameters():
            if weight.dim() == 2:  # the layers' matrices, not their norms
                weight.mul_(layer_scale)
    if time_conditioning:
        for module in (model.noise_embed, model.final_modulation, *(block.modulation for block in model.blocks)):
            module.float()
    return model.eval()


def entropy(pi: torch.Tensor) -> float:
    return float(-(pi * pi.log()).sum())


def prefix_canvas(batch_size: int, length: int, prompt: list[int] | tuple[int, ...] = ()) -> Canvas:
    """``batch_size`` rows of ``prompt`` followed by ``length`` positions to generate (samplers set their MASK)."""
    return Canvas.from_prompts([list(prompt)] * batch_size, length, mask_id=0, pad_id=0)


class Run(NamedTuple):
    """A sampler run drained in a test: the final tokens, the model calls and every step."""

    tokens: torch.Tensor
    model_calls: int
    trace: list[SamplerStep]


def run_steps(model: nn.Module, process: Any, *, canvas: Canvas, **options: Any) -> Run:
    """Every step of the sampler of ``process``, with options given as keywords (seed 0 unless given)."""
    trace = list(sampler_steps(model, process, canvas, SamplerOptions(**{"seed": 0, **options})))
    return Run(trace[-1].tokens, trace[-1].model_calls, trace)
