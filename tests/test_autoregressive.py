"""The autoregressive baseline: exact loss, KV-cached sampling, training end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from scipy.stats import chisquare
from torch import nn

from ddlm import DiffusionPipeline
from ddlm.model import ModelConfig, Transformer
from ddlm.model.transformer import KVCache
from ddlm.processes import Autoregressive
from ddlm.training import load_config, prepare_training
from tests.helpers import prefix_canvas, run_steps

K = 3  # real tokens 0..K-1, then the special ids
MASK, EOS, PAD = K, K + 1, K + 2
PROCESS = Autoregressive(mask_id=MASK, eos_id=EOS, pad_id=PAD)
# A first-order Markov chain over the real tokens: row a is p(next | previous = a).
TRANSITION = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.1, 0.5, 0.4]], dtype=torch.float64)
STATIONARY = torch.linalg.matrix_power(TRANSITION, 200)[0]


class MarkovOracle(nn.Module):
    """The exact causal model of the stationary chain: each position's logits depend on its token only.

    After EOS (beginning of sequence) comes the stationary distribution. The cache only
    counts positions: nothing before the current token matters.
    """

    def __init__(self):
        super().__init__()
        self.config = ModelConfig(vocab_size=K + 3, context_length=64, d_model=8, n_layers=1, n_heads=2, causal=True)
        table = torch.zeros(K + 3, K + 3)  # rows of MASK and PAD are never used
        table[:, K:] = -torch.inf
        table[:K, :K] = TRANSITION.log()
        table[EOS, :K] = STATIONARY.log()
        self.register_buffer("table", table)
        self.anchor = nn.Parameter(torch.zeros(()))  # samplers read the device from a parameter

    def new_cache(self, batch_size: int) -> KVCache:
        return KVCache(batch_size, n_layers=0, capacity=self.config.context_length)

    def forward(self, tokens: torch.Tensor, noise: torch.Tensor | None = None, cache: KVCache | None = None):
        if cache is not None:
            cache.length += tokens.shape[1]
        return self.table[tokens]


def markov_rows(count: int, length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.empty(count, length, dtype=torch.long)
    rows[:, 0] = torch.multinomial(STATIONARY.expand(count, -1), 1, generator=generator)[:, 0]
    for i in range(1, length):
        rows[:, i] = torch.multinomial(TRANSITION[rows[:, i - 1]], 1, generator=generator)[:, 0]
    return rows


def tiny_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    config = dict(vocab_size=K + 3, context_length=32, d_model=16, n_layers=2, n_heads=2, causal=True)
    return Transformer(ModelConfig(**{**config, **overrides})).eval()


def test_loss_is_the_next_token_nll_of_every_non_pad_token():
    net = tiny_model()
    x0 = torch.tensor([[0, 1, 2, 2, 1, 0, EOS, 1], [2, 2, 0, EOS, 1, PAD, PAD, PAD]])
    output = PROCESS.loss(net, x0)
    nll, count = 0.0, 0
    with torch.no_grad():
        for row in x0.tolist():
            for i, target in enumerate(row):
                if target == PAD:
                    continue
                logits = net(torch.tensor([[EOS, *row[:i]]]))[0, -1].double()
                logits[[MASK, PAD]] = -torch.inf
                nll -= float(torch.log_softmax(logits, dim=-1)[target])
                count += 1
    assert output.num_tokens == count == 13
    assert output.nelbo_sum == pytest.approx(nll, rel=1e-5)
    assert output.loss.requires_grad
    assert float(output.loss.detach()) == pytest.approx(nll / count, rel=1e-5)


def test_loss_of_the_exact_model_is_the_entropy_of_the_chain():
    length = 32
    x0 = markov_rows(4000, length, seed=0)
    output = PROCESS.loss(MarkovOracle(), x0)
    log_p = torch.cat((STATIONARY.log()[x0[:, :1]], TRANSITION.log()[x0[:, :-1], x0[:, 1:]]), dim=1)
    per_row = -log_p.mean(dim=1)
    first = float(-(STATIONARY * STATIONARY.log()).sum())
    rate = float(-(STATIONARY[:, None] * TRANSITION * TRANSITION.log()).sum())
    exact = (first + (length - 1) * rate) / length
    assert output.num_tokens == x0.numel()
    assert float(output.loss) == pytest.approx(float(per_row.mean()), rel=1e-5)
    assert abs(float(output.loss) - exact) < 4 * float(per_row.std()) / math.sqrt(len(per_row))


def test_sampler_reproduces_the_chain():
    batch, length = 400, 30
    tokens = run_steps(MarkovOracle(), PROCESS, canvas=prefix_canvas(batch, length), seed=0).tokens
    assert (tokens < K).all()
    previous = torch.cat((torch.full((batch, 1), K), tokens[:, :-1]), dim=1)  # row K stands for EOS
    counts = torch.bincount((previous * K + tokens).flatten(), minlength=(K + 1) * K).view(K + 1, K).double()
    expected = counts.sum(dim=1, keepdim=True) * torch.cat((TRANSITION, STATIONARY[None]))
    # Pearson's test of Markov transition counts: (K + 1)(K - 1) degrees of freedom
    result = chisquare(counts.flatten().numpy(), expected.flatten().numpy(), ddof=K)
    assert result.pvalue > 1e-4, (counts, expected)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_kv_cache_gives_the_same_samples_as_full_forward_passes(temperature):
    net = tiny_model()
    runs = [
        run_steps(net, PROCESS, canvas=prefix_canvas(3, 20, [0, 2]), seed=7, use_cache=use_cache,
                  temperature=temperature)
        for use_cache in (True, False)
    ]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert runs[0].model_calls == runs[1].model_calls == 20


def test_prompt_is_kept_and_the_trace_fills_one_position_per_step():
    prompt = [2, 0, 1]
    out = run_steps(tiny_model(), PROCESS, canvas=prefix_canvas(4, 9, prompt), seed=1)
    assert out.tokens.shape == (4, 12)
    assert (out.tokens[:, :3] == torch.tensor(prompt)).all()
    assert not torch.isin(out.tokens, torch.tensor([MASK, PAD])).any()
    assert len(out.trace) == 9 and out.trace[-1].noise == 0.0
    for step in out.trace:
        assert step.noise == pytest.approx(1 - (step.index + 1) / 9)  # the fraction still to write
        column = len(prompt) + step.index
        assert step.changed[:, column].all() and step.changed.sum() == 4
        assert torch.equal(step.tokens[:, : column + 1], out.tokens[:, : column + 1])
        assert (step.tokens[:, column + 1 :] == MASK).all()


def test_a_sample_does_not_depend_on_the_batch_it_is_drawn_in():
    net = tiny_model()
    alone = run_steps(net, PROCESS, canvas=prefix_canvas(1, 12), seed=3)
    batch = run_steps(net, PROCESS, canvas=prefix_canvas(4, 12), seed=3)
    assert torch.equal(alone.tokens[0], batch.tokens[0])
    assert not torch.equal(batch.tokens[0], batch.tokens[1])


def test_a_time_conditioned_backbone_sees_noise_level_zero():
    net = tiny_model(time_conditioning=True)
    assert math.isfinite(PROCESS.loss(net, torch.tensor([[0, 1, 2, 1]])).nelbo_sum)
    assert run_steps(net, PROCESS, canvas=prefix_canvas(2, 5), seed=0).tokens.shape == (2, 5)


def test_training_builds_a_causal_model_and_the_pipeline_samples_left_to_right(tmp_path: Path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    config = load_config("tiny", overrides=["process.name=ar", "optim.max_steps=3", "log.eval_every=0",
                                            "log.save_every=0"])
    trainer = prepare_training(config, tmp_path / "run", data=corpus, device="cpu", cache_dir=tmp_path / "cache",
                               show_progress=False)
    assert trainer.model.config.causal
    assert math.isfinite(trainer.train()["final_valid_nelbo"])
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "run", device="cpu", precision="bf16")
    assert pipe.process.name == "ar" and pipe.model.config.causal
    output = pipe.sample("the ", num_samples=2, length=12, seed=0)
    assert output.tokens.shape == (2, 16) and output.model_calls == 12
    texts = pipe.generate("the ", num_samples=2, length=12, seed=0)
    assert len(texts) == 2 and all(text.startswith("the ") for text in texts)


def test_trace_confidence_is_the_probability_of_each_drawn_token():
    net = tiny_model()
    out = run_steps(net, PROCESS, canvas=prefix_canvas(2, 5), seed=0)
    for step in out.trace:
        inputs = torch.cat((torch.full((2, 1), PROCESS.eos_id), out.tokens[:, : step.index]), dim=1)
        with torch.no_grad():
            probs = PROCESS.log_probs(net(inputs)[:, -1]).exp()
        expected = probs.gather(-1, out.tokens[:, step.index, None])[:, 0]
        torch.testing.assert_close(step.confidence[:, step.index], expected, atol=1e-5, rtol=1e-4)
        assert step.confidence.isnan().sum() == 2 * 4
