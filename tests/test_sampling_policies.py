"""The masked-diffusion sampling suite: policies, blocks, caches, remasking and constraints."""

from __future__ import annotations

import re

import pytest
import torch
from scipy.stats import chisquare

from ddlm import DiffusionPipeline
from ddlm.errors import DDLMError
from ddlm.model import ModelConfig, Transformer
from ddlm.processes import MaskedDiffusion, build_schedule
from ddlm.samplers import POLICIES, Canvas, parse_template
from ddlm.samplers.policies import remask_probability
from ddlm.tokenizers import CharTokenizer
from tests.helpers import IIDOracle, run_steps

K = 6  # real tokens 0..5; then mask 6, eos 7, pad 8
MASK, EOS, PAD = K, K + 1, K + 2
PI = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.07, 0.03])
GREEDY = {"temperature": 0}


def process(schedule: str = "linear") -> MaskedDiffusion:
    return MaskedDiffusion(build_schedule(schedule), mask_id=MASK, pad_id=PAD, eos_id=EOS)


def tiny_model(n_layers: int = 2, seed: int = 0, time_conditioning: bool = False) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=K + 3, context_length=64, d_model=32, n_layers=n_layers, n_heads=4,
                         time_conditioning=time_conditioning)
    return Transformer(config).eval()


def canvas(rows: list[list[int | None]]) -> Canvas:
    return Canvas.from_rows(rows, MASK, PAD)


def prompt_canvas(batch: int, prompt: list[int], length: int) -> Canvas:
    return Canvas.from_prompts([prompt] * batch, length, MASK, PAD)


# ----- the LLaDA algorithm, written out slowly from ../shared/MATH.md -----

@torch.no_grad()
def reference_semi_autoregressive(
    model: Transformer, prompt: list[int], length: int, block_length: int, steps: int, score: str
) -> list[int]:
    x = torch.tensor([prompt + [MASK] * length])
    blocks = length // block_length
    steps_per_block = steps // blocks
    for block in range(blocks):
        start, end = len(prompt) + block * block_length, len(prompt) + (block + 1) * block_length
        masked_at_start = int((x[0, start:end] == MASK).sum())
        counts = [masked_at_start // steps_per_block + (j < masked_at_start % steps_per_block)
                  for j in range(steps_per_block)]
        for j in range(steps_per_block):
            probs = process().log_probs(model(x)).double().exp()[0]
            chosen = probs.argmax(dim=-1)
            candidates = []
            for i in range(start, end):
                if x[0, i] != MASK:
                    continue
                p = probs[i]
                if score == "confidence":
                    value = float(p[chosen[i]])
                elif score == "margin":
                    top = sorted(p.tolist(), reverse=True)
                    value = top[0] - top[1]
                elif score == "entropy":
                    value = float(sum(q * torch.log(q) for q in p if q > 0))
                else:  # left-to-right: the leftmost masked positions first
                    value = -i
                candidates.append((-value, i))
            for _, i in sorted(candidates)[: counts[j]]:
                x[0, i] = chosen[i]
    return x[0].tolist()


@pytest.mark.parametrize("score", ["confidence", "margin", "entropy", "left-to-right"])
@pytest.mark.parametrize(("block_length", "steps"), [(12, 12), (4, 6), (6, 4), (3, 8)])
def test_semi_autoregressive_greedy_matches_the_reference(score, block_length, steps):
    model = tiny_model()
    prompt = [1, 4, 2]
    out = run_steps(model, process(), canvas=prompt_canvas(2, prompt, 12), steps=steps, **GREEDY,
                        policy=score, block_length=block_length)
    expected = reference_semi_autoregressive(model, prompt, 12, block_length, steps, score)
    assert out.tokens[0].tolist() == expected
    assert out.tokens[1].tolist() == expected  # temperature 0: deterministic


def test_blocks_fill_left_to_right():
    out = run_steps(tiny_model(), process(), canvas=prompt_canvas(1, [0], 12), steps=6, policy="confidence",
                        block_length=4, seed=0)
    assert [step.index for step in out.trace] == list(range(6))
    for step in out.trace:
        block = step.index // 2  # 3 blocks of 4 positions after the prompt, 2 steps each
        changed = step.changed[0].nonzero()[:, 0]
        assert len(changed) == 2
        assert ((changed >= 1 + 4 * block) & (changed < 5 + 4 * block)).all()



def test_left_to_right_reveals_the_leftmost_masked_positions_first():
    out = run_steps(tiny_model(), process(), canvas=prompt_canvas(2, [0, 3], 12), steps=8, policy="left-to-right",
                    seed=0)
    revealed = [step.changed[row].nonzero()[:, 0].tolist() for step in out.trace for row in range(2)]
    assert revealed[0::2] == revealed[1::2]  # both rows reveal the same positions in the same order
    counts = [2, 2, 2, 2, 1, 1, 1, 1]  # 12 masked positions over 8 steps, the remainder first
    starts = [2 + sum(counts[:index]) for index in range(8)]
    assert revealed[0::2] == [list(range(start, start + count)) for start, count in zip(starts, counts)]

# ----- first-hitting and exactness against a toy distribution with dependencies -----

PAIRS = torch.tensor([[0.30, 0.05, 0.05], [0.02, 0.08, 0.20], [0.10, 0.10, 0.10]], dtype=torch.float64)


class PairOracle(torch.nn.Module):
    """The exact denoiser for 2-token sequences (a, b) with joint distribution PAIRS."""

    uses_noise = False

    def __init__(self):
        super().__init__()
        self.config = ModelConfig(vocab_size=K + 3, context_length=2, d_model=8, n_layers=1, n_heads=2)
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(self, tokens, noise=None, key_mask=None):
        self.calls += 1
        probs = torch.zeros(*tokens.shape, K + 3, dtype=torch.float64)
        for row, (a, b) in enumerate(tokens.tolist()):
            probs[row, 0, :3] = PAIRS[:, b] if b != MASK else PAIRS.sum(dim=1)
            probs[row, 1, :3] = PAIRS[a, :] if a != MASK else PAIRS.sum(dim=0)
        return (probs / probs.sum(dim=-1, keepdim=True)).log().float()


def pair_counts(tokens: torch.Tensor) -> torch.Tensor:
    return torch.bincount(tokens[:, 0] * 3 + tokens[:, 1], minlength=9).double()


def assert_pairs_match(tokens: torch.Tensor) -> None:
    counts = pair_counts(tokens)
    expected = PAIRS.flatten() * len(tokens)
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3


def test_first_hitting_reproduces_a_joint_distribution_with_one_call_per_token():
    oracle = PairOracle()
    out = run_steps(oracle, process(), canvas=prompt_canvas(3000, [], 2), steps=1, policy="first-hitting", seed=0)
    assert out.model_calls == 2 == oracle.calls
    assert_pairs_match(out.tokens)


def test_revealing_both_tokens_at_once_is_caught_by_the_pair_test():
    """The check above can fail: one ancestral step draws a and b independently."""
    out = run_steps(PairOracle(), process(), canvas=prompt_canvas(3000, [], 2), steps=1, seed=0)
    counts = pair_counts(out.tokens)
    assert chisquare(counts.numpy(), (PAIRS.flatten() * 3000).numpy()).pvalue < 1e-6


def test_first_hitting_calls_once_per_generated_token():
    oracle = IIDOracle(PI)
    out = run_steps(oracle, process(), canvas=prompt_canvas(4, [1, 2], 17), steps=1, policy="first-hitting")
    assert out.model_calls == 17 == oracle.calls
    assert (out.tokens != MASK).all()


@pytest.mark.parametrize("remask", ["cap", "rescale"])
def test_remdm_keeps_the_distribution_and_does_remask(remask):
    out = run_steps(IIDOracle(PI), process(), canvas=prompt_canvas(300, [], 40), steps=30, seed=1,
                        remask=remask, remask_eta=0.5)
    assert (out.tokens != MASK).all()
    counts = torch.bincount(out.tokens.flatten(), minlength=K).double()
    assert chisquare(counts.numpy(), (PI.double() * out.tokens.numel()).numpy()).pvalue > 1e-3
    remasked = sum(int((step.changed & (step.tokens == MASK)).sum()) for step in out.trace)
    assert remasked > 100


def test_remask_probability_respects_its_bound():
    alpha_t, alpha_s = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    bound = (1 - alpha_s) / alpha_t
    assert float(remask_probability("cap", 0.9, alpha_t, alpha_s)) == pytest.approx(float(bound))
    assert float(remask_probability("cap", 0.1, alpha_t, alpha_s)) == pytest.approx(0.1)
    assert float(remask_probability("rescale", 0.5, alpha_t, alpha_s)) == pytest.approx(0.5 * float(bound))
    assert float(remask_probability("cap", 0.5, torch.tensor(1.0), torch.tensor(1.0))) == 0.0


# ----- caches -----

class Recorder(torch.nn.Module):
    """Wraps a model and records the width of every call."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model, self.config, self.widths = model, model.config, []
        self.uses_noise = model.uses_noise

    def new_cache(self, batch_size):
        return self.model.new_cache(batch_size)

    def forward(self, tokens, noise=None, cache=None, key_mask=None):
        self.widths.append(tokens.shape[1])
        return self.model(tokens, noise, cache=cache, key_mask=key_mask)


def test_prefix_cache_is_exact_for_a_one_layer_model_and_computes_less():
    """With one layer, keys/values of the prefix depend on the prefix only: caching them changes nothing."""
    model = tiny_model(n_layers=1)
    plain = run_steps(model, process(), canvas=prompt_canvas(3, [1, 2], 16), steps=8, policy="confidence",
                          block_length=4, seed=2)
    recorder = Recorder(model)
    cached = run_steps(recorder, process(), canvas=prompt_canvas(3, [1, 2], 16), steps=8, policy="confidence",
                           block_length=4, seed=2, prefix_cache=True)
    assert torch.equal(plain.tokens, cached.tokens)
    assert recorder.widths == [18, 16, 18, 12, 18, 8, 18, 4]  # a full call opens each block


def test_prefix_cache_is_an_approximation_for_deeper_models():
    model = tiny_model(n_layers=3, seed=4)
    runs = [run_steps(model, process(), canvas=prompt_canvas(8, [1], 24), steps=24, policy="confidence",
                          block_length=8, **GREEDY, prefix_cache=cache) for cache in (False, True)]
    assert runs[0].model_calls == runs[1].model_calls == 24
    assert (runs[1].tokens != MASK).all()


def test_unchanged_canvas_skips_the_model_for_time_agnostic_models_only():
    many_steps = {"steps": 200, "seed": 0, "canvas": prompt_canvas(2, [], 10)}
    agnostic = run_steps(tiny_model(), process(), **many_steps)
    conditioned = run_steps(tiny_model(time_conditioning=True), process(), **many_steps)
    assert agnostic.model_calls <= 20 and conditioned.model_calls > 150  # it stops once all is revealed


# ----- threshold decoding -----

@pytest.mark.parametrize("policy", ["threshold", "random", "margin"])
def test_threshold_reveals_every_confident_position_and_at_least_one(policy):
    model = tiny_model(seed=3)
    out = run_steps(model, process(), canvas=prompt_canvas(4, [0], 20), steps=20, policy=policy,
                        threshold=0.3, seed=1)
    for step in out.trace:
        confident = step.confidence > 0.3  # NaN (not a candidate) compares False
        assert (step.changed | ~confident).all()
        has_candidates = ~step.confidence.isnan().all(dim=1)
        assert (step.changed.sum(dim=1)[has_candidates] >= 1).all()
    assert (out.tokens != MASK).all()


def test_threshold_uses_fewer_calls_when_the_model_is_sure():
    sure = torch.tensor([0.96, 0.01, 0.01, 0.01, 0.005, 0.005])
    out = run_steps(IIDOracle(sure), process(), canvas=prompt_canvas(2, [], 32), steps=32, policy="threshold",
                        **GREEDY)
    assert out.model_calls == 1


# ----- constraints that hold for every policy -----

INFILL_ROWS = [[3, None, None, 1, None, 2], [None, 4, None, None], [5, 5, None, None, None, None, 0, None]]


@pytest.mark.parametrize("policy", POLICIES)
def test_given_tokens_never_change_and_no_mask_remains(policy):
    board = canvas(INFILL_ROWS)
    out = run_steps(tiny_model(), process(), canvas=board, steps=8, policy=policy, seed=4)
    assert torch.equal(out.tokens[board.fixed], board.tokens[board.fixed])
    assert (out.tokens[~board.active] == PAD).all()
    assert not (out.tokens[board.active] == MASK).any()
    assert not (out.tokens[board.generated] == PAD).any()


def test_padding_does_not_change_a_row():
    """Rows of different lengths are padded and the padding is hidden: a row samples the same alone."""
    model = tiny_model()
    together = run_steps(model, process(), canvas=canvas([[1, None, None, None], [2, None]]), steps=4,
                             **GREEDY, policy="confidence")
    alone = run_steps(model, process(), canvas=canvas([[2, None]]), steps=4, **GREEDY, policy="confidence")
    assert together.tokens[1, :2].tolist() == alone.tokens[0].tolist()


class EOSLover(IIDOracle):
    """An i.i.d. oracle that puts most mass on end-of-text."""

    def __init__(self):
        super().__init__(PI)
        self.logits[EOS] = 5.0


def test_min_length_keeps_end_of_text_out_of_the_first_positions():
    out = run_steps(EOSLover(), process(), canvas=prompt_canvas(50, [1], 12), steps=12, min_length=5, seed=0)
    assert not (out.tokens[:, 1:6] == EOS).any()
    assert (out.tokens[:, 6:] == EOS).float().mean() > 0.8


def test_generate_ends_each_gap_at_end_of_text_and_keeps_the_given_text():
    pipe = DiffusionPipeline(EOSLover(), CharTokenizer("abcdef"), process())
    texts = pipe.generate(infill="ab[MASK*6]cd[MASK*3]", num_samples=20, steps=6, seed=0, min_length=2)
    gaps = [re.fullmatch(r"ab([a-f]{2,6})cd([a-f]{0,3})", text) for text in texts]
    assert all(gaps), texts
    assert sum(len(gap[1]) for gap in gaps) < 20 * 3  # the end-of-text lover ends the first gap early


# ----- bad input -----

@pytest.mark.parametrize(("options", "message"), [
    ({"policy": "greedy"}, "unknown policy"),
    ({"block_length": 5}, "does not divide"),
    ({"remask": "cap", "policy": "confidence"}, "remasking works with the ancestral policy"),
    ({"threshold": 0.5}, "a threshold needs a ranked policy"),
    ({"steps": 2, "block_length": 4}, "cannot cover 3 blocks"),
    ({"min_length": 13}, "exceeds the 12 generated positions"),
])
def test_bad_options_are_clear_errors(options, message):
    options = {"steps": 6, **options}
    with pytest.raises(DDLMError, match=message):
        run_steps(tiny_model(), process(), canvas=prompt_canvas(1, [], 12), **options)


def test_canvas_layouts():
    board = Canvas.from_prompts([[1, 2], [3]], 3, MASK, PAD, suffix=[4])
    assert board.tokens.tolist() == [[1, 2, MASK, MASK, MASK, 4], [3, MASK, MASK, MASK, 4, PAD]]
    assert board.generated_rank().tolist() == [[-1, -1, 0, 1, 2, -1], [-1, 0, 1, 2, -1, -1]]
    assert board.prefix_length() is None and board.key_mask is not None
    plain = Canvas.from_prompts([[1, 2], [3, 4]], 3, MASK, PAD)
    assert plain.prefix_length() == 2 and plain.key_mask is None
    with pytest.raises(DDLMError, match="no position to generate"):
        Canvas.from_rows([[1, 2]], MASK, PAD)


# ----- the infill template -----

def characters(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_template_masks_and_escapes():
    row = parse_template(r"The [MASK*3] sat \[on\] [MASK] mat", characters)
    text = "".join("_" if token is None else chr(token) for token in row)
    assert text == "The ___ sat [on] _ mat"


@pytest.mark.parametrize("template", ["no masks here", "an [UNMASK] word", "a [MASK*0] gap", "stray ] bracket",
                                      "open [MASK"])
def test_malformed_templates_are_rejected(template):
    with pytest.raises(DDLMError, match="template"):
        parse_template(template, characters)
