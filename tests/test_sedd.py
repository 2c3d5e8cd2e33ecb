"""Score-entropy diffusion (SEDD) items of MATH.md, each against a brute-force or analytic reference."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ddlm.device import autocast
from ddlm.errors import DDLMError
from ddlm.model import ModelConfig, Transformer
from ddlm.families import build_process
from ddlm.processes import Vocabulary
from ddlm.processes.sedd import ScoreEntropyDiffusion
from ddlm.samplers import Canvas
from tests.helpers import entropy, prefix_canvas, run_steps
from tests.test_sampling import assert_matches

# MASK sits between real tokens (catches "MASK is the last id" bugs); EOS is a real token.
VOCAB = Vocabulary(size=8, mask_id=2, eos_id=5, pad_id=7)
MASK, PAD = VOCAB.mask_id, VOCAB.pad_id
REAL = [0, 1, 3, 4, 5, 6]
N = len(REAL)
PI = torch.zeros(VOCAB.size, dtype=torch.float64)
PI[REAL] = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.07, 0.03], dtype=torch.float64)
GRAPHS = ["sedd-absorb", "sedd-uniform"]
SIGMA_BARS = [1e-4, 1e-3, 0.1, 1.0, 5.0, 20.0]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: intra-op threads only add overhead (a hundredfold on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_process(name: str, schedule: dict | None = None) -> ScoreEntropyDiffusion:
    config = {"name": name, "antithetic": False} | ({"schedule": schedule} if schedule else {})
    return ScoreEntropyDiffusion.from_config(config, VOCAB)


# ----- the references, written from MATH.md in float64 -----


def target(name: str) -> torch.Tensor:
    """Where a corrupted token goes: MASK (absorbing) or a uniform real token (uniform)."""
    probs = torch.zeros(VOCAB.size, dtype=torch.float64)
    if name == "sedd-absorb":
        probs[MASK] = 1
    else:
        probs[REAL] = 1 / N
    return probs


def marginal(name: str, sigma_bar: torch.Tensor) -> torch.Tensor:
    """(B, V) p_t(y) for i.i.d. tokens with marginal PI: e^-sb PI + (1 - e^-sb) target."""
    sigma_bar = sigma_bar.double()[:, None]
    return torch.exp(-sigma_bar) * PI + -torch.expm1(-sigma_bar) * target(name)


def transition(name: str, x0: int, sigma_bar: float) -> torch.Tensor:
    """(V,) p(x_t = y | x0)."""
    stay = torch.eye(VOCAB.size, dtype=torch.float64)[x0]
    return math.exp(-sigma_bar) * stay + -math.expm1(-sigma_bar) * target(name)


def forward_rate(name: str, y: int, x: int) -> float:
    """Q(y -> x) for y != x: absorbing, every real token jumps into MASK at rate 1; uniform, rate 1/N."""
    if name == "sedd-absorb":
        return 1.0 if x == MASK and y in REAL else 0.0
    return 1 / N if x in REAL and y in REAL else 0.0


def brute_force_entropy(name: str, log_score: torch.Tensor, xt: int, x0: int, sigma_bar: float) -> float:
    """sum_{y != x_t} Q(y -> x_t) [s_y - r_y log s_y + K(r_y)], literally, in float64."""
    p = transition(name, x0, sigma_bar)
    total = 0.0
    for y in range(VOCAB.size):
        rate = forward_rate(name, y, xt)
        if y == xt or rate == 0:
            continue
        s, r = math.exp(log_score[y]), float(p[y] / p[xt])
        k = r * (math.log(r) - 1) if r > 0 else 0.0
        total += rate * (s - (r * math.log(s) if r > 0 else 0.0) + k)
    return total


def brute_force_rows(
    name: str, log_score: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor, sigma_bar: float
) -> torch.Tensor:
    """brute_force_entropy for each row of log_score (P, V) and position (x_t, x0)."""
    rows = [brute_force_entropy(name, row, int(a), int(b), sigma_bar) for row, a, b in zip(log_score, xt, x0)]
    return torch.tensor(rows, dtype=torch.float64)


def position_pairs(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, x0) for every case: x_t = MASK (absorbing); unmoved and moved tokens (uniform)."""
    if name == "sedd-absorb":
        return torch.full((N,), MASK), torch.tensor(REAL)
    pairs = torch.tensor([(xt, x0) for xt in REAL for x0 in REAL])
    return pairs[:, 0], pairs[:, 1]


def true_log_ratios(name: str, xt: torch.Tensor, x0: torch.Tensor, sigma_bar: float) -> torch.Tensor:
    """(P, V) log r_y = log p(y | x0) - log p(x_t | x0), float64."""
    p = torch.stack([transition(name, int(a), sigma_bar) for a in x0])
    return p.log() - p.gather(1, xt[:, None]).log()


def process_entropy(
    name: str, log_score: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor, sigma_bar: float
) -> torch.Tensor:
    process = make_process(name)
    return process.score_entropy(log_score.float(), xt, x0, torch.tensor(sigma_bar)).double()


# ----- score entropy -----


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("sigma_bar", SIGMA_BARS)
def test_score_entropy_is_zero_at_the_true_ratios(name, sigma_bar):
    xt, x0 = position_pairs(name)
    log_ratio = true_log_ratios(name, xt, x0, sigma_bar)
    brute = brute_force_rows(name, log_ratio, xt, x0, sigma_bar)
    scale = log_ratio.exp().sum(-1)  # the size of the individual terms
    assert (brute.abs() <= 1e-12 * scale).all(), brute
    assert process_entropy(name, log_ratio, xt, x0, sigma_bar).abs().max() < 1e-6


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("sigma_bar", SIGMA_BARS)
def test_score_entropy_is_positive_away_from_the_true_ratios(name, sigma_bar):
    """Moving any one score that enters the sum, up or down, makes the loss positive (and match the formula)."""
    xt, x0 = position_pairs(name)
    truth = true_log_ratios(name, xt, x0, sigma_bar)
    for y in range(VOCAB.size):
        used = torch.tensor([forward_rate(name, y, int(a)) > 0 and y != a for a in xt])
        for delta in (-0.05, 0.05):
            perturbed = truth.clone()
            perturbed[:, y] = torch.where(truth[:, y].isfinite(), truth[:, y] + delta, math.log(1e-3))
            brute = brute_force_rows(name, perturbed, xt, x0, sigma_bar)
            ours = process_entropy(name, perturbed, xt, x0, sigma_bar)
            assert (brute[used] > 0).all() and (ours[used] > 0).all()
            torch.testing.assert_close(ours, brute, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("sigma_bar", SIGMA_BARS)
def test_score_entropy_equals_the_brute_force_formula_for_random_scores(name, sigma_bar):
    xt, x0 = position_pairs(name)
    generator = torch.Generator().manual_seed(int(sigma_bar * 1000))
    log_score = torch.randn(len(xt), VOCAB.size, generator=generator, dtype=torch.float64) * 2
    log_score = log_score.float().double()  # what the float32 implementation sees
    brute = brute_force_rows(name, log_score, xt, x0, sigma_bar)
    torch.testing.assert_close(process_entropy(name, log_score, xt, x0, sigma_bar), brute, rtol=1e-5, atol=1e-8)


def test_visible_and_pad_positions_carry_no_loss():
    process = make_process("sedd-absorb")
    xt = torch.tensor([[0, MASK, 3, PAD]])
    x0 = torch.tensor([[0, 1, 3, PAD]])
    values = process.score_entropy(torch.randn(1, 4, VOCAB.size), xt, x0, torch.tensor(0.5))
    assert values[0, 1] > 0 and values[0, [0, 2, 3]].eq(0).all()
    uniform = make_process("sedd-uniform")
    values = uniform.score_entropy(torch.randn(1, 4, VOCAB.size), x0, x0, torch.tensor(0.5))
    assert values[0, :3].gt(0).all() and values[0, 3] == 0


# ----- forward process and parameterisation -----


@pytest.mark.parametrize("schedule", [{"name": "geometric"}, {"name": "linear"}])
def test_rate_is_the_derivative_of_the_total_noise(schedule):
    process = make_process("sedd-uniform", schedule)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64, requires_grad=True)
    (derivative,) = torch.autograd.grad(process.sigma_bar(t).sum(), t)
    torch.testing.assert_close(process.sigma(t.detach()), derivative, rtol=1e-9, atol=0)
    ends = process.sigma_bar(torch.tensor([0.0, 1.0], dtype=torch.float64))
    expected = [1e-4, 20.0] if schedule["name"] == "geometric" else [0.0, -math.log(1e-3)]
    torch.testing.assert_close(ends, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("name", GRAPHS)
def test_corruption_frequencies_match_the_transition(name):
    process = make_process(name, {"name": "linear"})
    t = torch.tensor([0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    x0 = torch.full((4, 60000), 3)
    x0[:, -100:] = PAD
    xt = process.corrupt(x0, t, torch.Generator().manual_seed(0))
    assert (xt[:, -100:] == PAD).all()
    for row, sigma_bar in zip(xt[:, :-100], process.sigma_bar(t)):
        counts = torch.bincount(row, minlength=VOCAB.size).double()
        assert_matches(counts, transition(name, 3, float(sigma_bar)))


def test_model_noise_is_the_corruption_probability():
    process = make_process("sedd-absorb", {"name": "geometric"})
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    noise = process.model_noise(t)
    torch.testing.assert_close(noise, 1 - torch.exp(-process.sigma_bar(t)))
    assert noise.min() >= 0 and noise.max() <= 1


def test_log_score_excludes_non_states_and_rescales_absorbing_scores():
    logits, sigma_bar = torch.randn(3, VOCAB.size), torch.tensor(0.7)
    absorbing = make_process("sedd-absorb").log_score(logits, torch.tensor([MASK, MASK, 4]), sigma_bar)
    uniform = make_process("sedd-uniform").log_score(logits, torch.tensor([0, 3, 4]), sigma_bar)
    assert absorbing[:, PAD].eq(-torch.inf).all() and uniform[:, [MASK, PAD]].eq(-torch.inf).all()
    assert absorbing[[0, 1], MASK].eq(0).all() and absorbing[2, 4] == 0  # the current token: ratio 1
    assert uniform[[0, 1, 2], [0, 3, 4]].eq(0).all()
    expected = logits[0, REAL] - math.log(math.expm1(0.7)) - math.log(N)
    torch.testing.assert_close(absorbing[0, REAL], expected)
    torch.testing.assert_close(uniform[0, REAL[1:]], logits[0, REAL[1:]])  # row 0 is at token 0


# ----- an exact score model for i.i.d. data -----


class ExactScore(nn.Module):
    """Network outputs that give the exact log-ratios for i.i.d. tokens with marginal PI.

    For i.i.d. tokens the ratio at position i is p_t(y) / p_t(x_t,i) with p_t the marginal;
    sigma_bar is read back from the noise input 1 - e^-sigma_bar. For the absorbing graph the
    process's rescaling (subtract log expm1(sigma_bar) and log N) is undone.
    """

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.config = ModelConfig(vocab_size=VOCAB.size, context_length=512, d_model=8, n_layers=1, n_heads=2,
                                  time_conditioning=True)
        self.anchor = nn.Parameter(torch.zeros(()))  # samplers read the device from a parameter

    def forward(self, tokens: torch.Tensor, noise: torch.Tensor, key_mask=None) -> torch.Tensor:
        sigma_bar = -torch.log1p(-noise.double())
        log_p = marginal(self.name, sigma_bar).log()
        log_ratio = log_p[:, None, :] - log_p.gather(1, tokens)[..., None]
        if self.name == "sedd-absorb":
            log_ratio = log_ratio + (torch.log(torch.expm1(sigma_bar)) + math.log(N))[:, None, None]
        return log_ratio.float()


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("sigma_bar_t, sigma_bar_s", [(20.0, 5.0), (3.0, 1.0), (0.5, 0.49), (0.1, 0.0), (1e-3, 0.0)])
def test_analytic_step_is_the_exact_reverse_transition(name, sigma_bar_t, sigma_bar_s):
    """At exact scores the step probabilities sum to one and equal p_s(y) p(x_t | x_s = y) / p_t(x_t)."""
    process = make_process(name)
    xt = torch.tensor([MASK] if name == "sedd-absorb" else REAL)
    t_noise = -torch.expm1(-torch.full((1,), sigma_bar_t, dtype=torch.float64))
    logits = ExactScore(name)(xt[None], t_noise)[0]
    probs = process.analytic_step(process.log_score(logits, xt, torch.tensor(sigma_bar_t)), xt,
                                  sigma_bar_t, sigma_bar_s)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(xt), dtype=torch.float64), rtol=0, atol=1e-6)
    p_s, p_t = (marginal(name, torch.tensor([sb]))[0] for sb in (sigma_bar_s, sigma_bar_t))
    kernel = torch.stack([transition(name, y, sigma_bar_t - sigma_bar_s) for y in range(VOCAB.size)])
    expected = p_s[None, :] * kernel[:, xt].T / p_t[xt, None]
    states = torch.tensor([y in REAL or (y == MASK and name == "sedd-absorb") for y in range(VOCAB.size)])
    torch.testing.assert_close(probs[:, states], expected[:, states], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("sigma_bar_t", [0.05, 1.0, 5.0])
def test_euler_step_agrees_with_the_exact_reverse_transition_to_first_order(name, sigma_bar_t):
    """For a small noise decrement d, the Euler step differs from the exact kernel by O(d^2), not O(d)."""
    process, d = make_process(name), 1e-4
    xt = torch.tensor([MASK] if name == "sedd-absorb" else REAL)
    t_noise = -torch.expm1(-torch.full((1,), sigma_bar_t, dtype=torch.float64))
    log_score = process.log_score(ExactScore(name)(xt[None], t_noise)[0], xt, torch.tensor(sigma_bar_t))
    euler = process.euler_step(log_score, xt, d)
    exact = process.analytic_step(log_score, xt, sigma_bar_t, sigma_bar_t - d)
    assert (euler - exact).abs().max() < 1e-2 * d
    assert (euler.sum(-1) - 1).abs().max() < 1e-12


def test_analytic_absorbing_sampler_follows_the_masking_schedule():
    """With exact scores, the fraction still masked at time s is (1 - e^-sb(s)) / (1 - e^-sb(1)).

    (The probability to be masked at s given masked at t = 1, where the sampler starts.)
    """
    process = make_process("sedd-absorb", {"name": "geometric", "sigma_max": 5.0})
    out = run_steps(ExactScore("sedd-absorb"), process, canvas=prefix_canvas(20, 500), steps=8, seed=2)
    for step in out.trace[:-1]:
        s = 1 - (step.index + 1) / 8
        sigma_bar_s = float(process.sigma_bar(torch.tensor(s, dtype=torch.float64)))
        expected = math.expm1(-sigma_bar_s) / math.expm1(-5.0)
        observed = (step.tokens == MASK).double().mean().item()
        assert abs(observed - expected) < 5 * math.sqrt(expected * (1 - expected) / 10000) + 1e-9


def nelbo_draws(process: ScoreEntropyDiffusion, model: nn.Module, x0: torch.Tensor, seed: int) -> torch.Tensor:
    """One NELBO draw per sequence of x0, in float64."""
    generator = torch.Generator().manual_seed(seed)
    t = process.sample_times(x0.shape[0], x0.device, generator)
    xt = process.corrupt(x0, t, generator)
    sigma_bar = process.sigma_bar(t)[:, None]
    log_score = process.log_score(model(xt, process.model_noise(t)), xt, sigma_bar)
    return process.nelbo_per_sequence(process.score_entropy(log_score, xt, x0, sigma_bar), t, x0).double()


def draw_iid(count: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(PI, count * length, replacement=True, generator=generator).view(count, length)


def prior_gap(name: str, sigma_bar_1: float) -> float:
    """KL(p_1 || prior) per token for i.i.d. PI data: the exact model's NELBO exceeds H(PI) by this."""
    p_1 = marginal(name, torch.tensor([sigma_bar_1]))[0]
    prior = target(name)
    if name == "sedd-absorb":  # the documented prior: the t = 1 marginal of a uniform x0
        prior = math.exp(-sigma_bar_1) * target("sedd-uniform") + -math.expm1(-sigma_bar_1) * prior
    keep = p_1 > 0
    return float((p_1[keep] * (p_1[keep] / prior[keep]).log()).sum())


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("schedule", [{"name": "geometric"}, {"name": "linear"},
                                      {"name": "geometric", "sigma_max": 1.0}])
def test_exact_score_nelbo_equals_length_times_entropy(name, schedule):
    """E[DSE integral] + prior term = L (H(PI) + KL(p_1 || prior)); the KL vanishes for the default noises.

    With sigma_max = 1 the prior term is large (~0.3-0.7 nats per token), so leaving it out
    or getting it wrong fails the check.
    """
    length, draws = 16, 20000
    process = make_process(name, schedule)
    values = nelbo_draws(process, ExactScore(name), draw_iid(draws, length), seed=1)
    mean, stderr = values.mean().item(), (values.std() / math.sqrt(draws)).item()
    sigma_bar_1 = float(process.sigma_bar(torch.tensor(1.0, dtype=torch.float64)))
    expected = length * (entropy(PI[REAL]) + prior_gap(name, sigma_bar_1))
    assert stderr < 0.02 * expected  # the check below is sharp
    assert abs(mean - expected) < 4 * stderr, (mean, expected, stderr)


@pytest.mark.parametrize("name", GRAPHS)
def test_loss_matches_its_parts_and_counts_only_real_tokens(name):
    process = ScoreEntropyDiffusion.from_config({"name": name}, VOCAB)  # antithetic
    model = ExactScore(name)
    x0 = draw_iid(32, 16)
    x0[:4, 10:] = PAD
    output = process.loss(model, x0, torch.Generator().manual_seed(3))
    parts = nelbo_draws(process, model, x0, seed=3)
    assert output.num_tokens == 32 * 16 - 4 * 6
    assert output.nelbo_sum == pytest.approx(parts.sum().item(), rel=1e-5)
    assert output.loss.item() == pytest.approx(parts.sum().item() / output.num_tokens, rel=1e-5)


# ----- samplers -----


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("method, steps", [("analytic", 8), ("euler", 64)])
def test_samplers_reproduce_the_iid_distribution(name, method, steps):
    process = make_process(name)
    out = run_steps(ExactScore(name), process, canvas=prefix_canvas(20, 500), steps=steps, seed=0, method=method)
    counts = torch.bincount(out.tokens.flatten(), minlength=VOCAB.size).double()
    assert_matches(counts, PI)


def tiny_transformer() -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB.size, context_length=32, d_model=16, n_layers=1, n_heads=2,
                         time_conditioning=True)
    return Transformer(config).eval()


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("method", ["analytic", "euler"])
@pytest.mark.parametrize("steps", [1, 4])
def test_prompt_is_kept_and_no_mask_survives(name, method, steps):
    prompt = [4, MASK - 1, 6]
    out = run_steps(tiny_transformer(), make_process(name), canvas=prefix_canvas(4, 12, prompt), steps=steps,
                      seed=steps, method=method)
    assert out.tokens.shape == (4, 15)
    assert (out.tokens[:, :3] == torch.tensor(prompt)).all()
    assert not (out.tokens == MASK).any() and not (out.tokens == PAD).any()
    assert len(out.trace) == steps and torch.equal(out.trace[-1].tokens, out.tokens)
    for step in out.trace:
        assert (step.tokens[:, :3] == torch.tensor(prompt)).all() and not step.changed[:, :3].any()


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("method", ["analytic", "euler"])
def test_infill_context_and_padding_never_move(name, method):
    rows = [[3, None, None, 5, None, 2], [None, 4, None]]
    board = Canvas.from_rows(rows, MASK, PAD)
    out = run_steps(tiny_transformer(), make_process(name), canvas=board, steps=5, seed=1, method=method)
    for tokens in [step.tokens for step in out.trace]:
        assert torch.equal(tokens[board.fixed], board.tokens[board.fixed])
        assert (tokens[~board.active] == PAD).all()
    assert not (out.tokens[board.generated] == MASK).any() and not (out.tokens[board.generated] == PAD).any()


class Hesitant(nn.Module):
    """A model whose scores are tiny (logits -10): masked positions would rather stay masked."""

    def __init__(self):
        super().__init__()
        self.config = ModelConfig(vocab_size=VOCAB.size, d_model=8, n_layers=1, n_heads=2, time_conditioning=True)
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, tokens: torch.Tensor, noise: torch.Tensor, key_mask=None) -> torch.Tensor:
        return torch.full((*tokens.shape, VOCAB.size), -10.0)


@pytest.mark.parametrize("method", ["analytic", "euler"])
def test_the_final_step_removes_all_noise(method):
    process = make_process("sedd-absorb", {"name": "geometric"})
    out = run_steps(Hesitant(), process, canvas=prefix_canvas(4, 50), steps=4, seed=0, method=method)
    assert (out.trace[-2].tokens == MASK).float().mean() > 0.5  # most masks are left for the last step
    assert not (out.tokens == MASK).any()


def test_absorbing_trace_reveals_each_position_once():
    out = run_steps(tiny_transformer(), make_process("sedd-absorb"), canvas=prefix_canvas(3, 12), steps=10,
                      seed=1)
    reveals = torch.stack([step.changed for step in out.trace]).sum(dim=0)
    assert (reveals == 1).all()
    masked_counts = [int((step.tokens == MASK).sum()) for step in out.trace]
    assert masked_counts == sorted(masked_counts, reverse=True) and masked_counts[-1] == 0
    assert out.model_calls <= 10


def test_a_sample_does_not_depend_on_the_batch_it_is_drawn_in():
    model, process = tiny_transformer(), make_process("sedd-uniform")
    alone = run_steps(model, process, canvas=prefix_canvas(1, 12), steps=6, seed=3)
    batch = run_steps(model, process, canvas=prefix_canvas(4, 12), steps=6, seed=3)
    assert torch.equal(alone.tokens[0], batch.tokens[0])


def test_bad_sampler_arguments_are_rejected():
    model, process = tiny_transformer(), make_process("sedd-absorb")
    with pytest.raises(DDLMError, match="steps"):
        run_steps(model, process, canvas=prefix_canvas(1, 4), steps=0)
    with pytest.raises(DDLMError, match="method"):
        run_steps(model, process, canvas=prefix_canvas(1, 4), steps=2, method="heun")


# ----- wiring -----


@pytest.mark.parametrize("name", GRAPHS)
def test_config_round_trip_and_registries(name):
    process = build_process({"name": name, "schedule": {"name": "geometric", "sigma_max": 10.0}, "eps": 1e-4,
                             "antithetic": False}, VOCAB)
    assert isinstance(process, ScoreEntropyDiffusion) and process.name == name
    assert build_process(process.to_dict(), VOCAB).to_dict() == process.to_dict()
    assert process.to_dict()["schedule"] == {"name": "geometric", "sigma_min": 1e-4, "sigma_max": 10.0}
    out = run_steps(tiny_transformer(), process, canvas=prefix_canvas(2, 5), steps=2, method="euler")
    assert out.tokens.shape == (2, 5)
    with pytest.raises(DDLMError, match="noise"):
        build_process({"name": name, "schedule": {"name": "cosine"}}, VOCAB)


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_loss_is_finite_with_finite_gradients(name, precision):
    model = tiny_transformer().train()
    process = ScoreEntropyDiffusion.from_config({"name": name}, VOCAB)
    x0 = draw_iid(16, 32)
    with autocast(torch.device("cpu"), precision):
        output = process.loss(model, x0, torch.Generator().manual_seed(0))
    assert output.loss.dtype == torch.float32 and torch.isfinite(output.loss)
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
