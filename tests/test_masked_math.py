"""The masked-diffusion items of MATH.md, each against an analytic reference."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

from ddlm.errors import DDLMError
from ddlm.model import ModelConfig, Transformer
from ddlm.processes import MaskedDiffusion, build_schedule
from tests.helpers import IIDOracle, entropy

SCHEDULES = ["linear", "cosine", "polynomial", "geometric"]
PI = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03], dtype=torch.float64)
MASK, EOS, PAD = 5, 6, 7


def make_process(schedule: str, antithetic: bool = False) -> MaskedDiffusion:
    return MaskedDiffusion(build_schedule(schedule), mask_id=MASK, pad_id=PAD, antithetic=antithetic)


def nelbo_draws(process: MaskedDiffusion, model: torch.nn.Module, x0: torch.Tensor, seed: int) -> torch.Tensor:
    """One NELBO draw per sequence of x0, in float64."""
    generator = torch.Generator().manual_seed(seed)
    t = process.sample_times(x0.shape[0], x0.device, generator)
    xt = process.corrupt(x0, t, generator)
    logits = model(xt, process.model_noise(t))
    return process.nelbo_per_sequence(process.masked_nll(logits, x0, xt), t).double()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_weight_is_minus_alpha_derivative_over_one_minus_alpha(schedule):
    sched = build_schedule(schedule)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64, requires_grad=True)
    alpha = sched.alpha(t)
    (derivative,) = torch.autograd.grad(alpha.sum(), t)
    expected = -derivative / (1 - alpha.detach())
    torch.testing.assert_close(sched.weight(t.detach()), expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_endpoints(schedule):
    sched = build_schedule(schedule)
    ends = sched.alpha(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert ends[0] == pytest.approx(1.0, abs=2e-4) and ends[1] == pytest.approx(0.0, abs=1e-8)
    grid = sched.alpha(torch.linspace(0, 1, 101, dtype=torch.float64))
    assert torch.all(grid[1:] < grid[:-1])


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_oracle_nelbo_equals_length_times_entropy(schedule):
    """Exact denoiser on i.i.d. data: the NELBO is L * H(pi) for every schedule."""
    length, draws = 16, 40000
    generator = torch.Generator().manual_seed(0)
    x0 = torch.multinomial(PI.float(), draws * length, replacement=True, generator=generator).view(draws, length)
    process = make_process(schedule)
    values = nelbo_draws(process, IIDOracle(PI.float()), x0, seed=1)
    mean, stderr = values.mean().item(), (values.std() / math.sqrt(draws)).item()
    expected = length * entropy(PI)
    assert stderr < 0.02 * expected  # the check below is sharp
    assert abs(mean - expected) < 4 * stderr, (mean, expected, stderr)


def test_oracle_identity_detects_a_wrong_weight():
    """The same check fails when the weight is off by a constant factor (a typical bug)."""
    length, draws = 16, 40000
    generator = torch.Generator().manual_seed(0)
    x0 = torch.multinomial(PI.float(), draws * length, replacement=True, generator=generator).view(draws, length)
    process = make_process("cosine")
    values = nelbo_draws(process, IIDOracle(PI.float()), x0, seed=1) * (math.pi / 2) ** -1  # drop the pi/2
    stderr = (values.std() / math.sqrt(draws)).item()
    assert abs(values.mean().item() - length * entropy(PI)) > 10 * stderr


def test_loss_matches_its_parts_and_counts_only_real_tokens():
    process = make_process("linear", antithetic=True)
    model = IIDOracle(PI.float())
    x0 = torch.randint(0, 5, (32, 16))
    x0[:4, 10:] = PAD  # padding is never masked and never counted
    generator = torch.Generator().manual_seed(3)
    output = process.loss(model, x0, generator)
    parts = nelbo_draws(process, model, x0, seed=3)
    assert output.num_tokens == 32 * 16 - 4 * 6
    assert output.nelbo_sum == pytest.approx(parts.sum().item(), rel=1e-5)
    assert output.loss.item() == pytest.approx(parts.sum().item() / output.num_tokens, rel=1e-5)


def test_schedule_invariance_for_a_model_that_does_not_see_time():
    """For a time-agnostic model the continuous-time NELBO does not depend on the schedule."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=8, context_length=12, d_model=16, n_layers=1, n_heads=2)).eval()
    draws = 6000
    x0 = torch.multinomial(PI.float(), draws * 12, replacement=True).view(draws, 12)
    estimates = {}
    with torch.no_grad():
        for schedule in ("linear", "cosine"):
            values = nelbo_draws(make_process(schedule), model, x0, seed=7)
            estimates[schedule] = (values.mean().item(), (values.std() / math.sqrt(draws)).item())
    (m1, s1), (m2, s2) = estimates["linear"], estimates["cosine"]
    assert abs(m1 - m2) < 4 * math.hypot(s1, s2), estimates


def test_antithetic_times_cover_the_interval_evenly():
    process = make_process("linear", antithetic=True)
    t = process.sample_times(8, torch.device("cpu"), torch.Generator().manual_seed(0))
    gaps = (t.sort().values.diff()).double()
    torch.testing.assert_close(gaps, torch.full_like(gaps, (1 - process.eps) / 8), rtol=1e-4, atol=1e-6)
    assert t.min() >= process.eps and t.max() <= 1


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_corruption_masks_with_probability_one_minus_alpha(schedule):
    process = make_process(schedule)
    x0 = torch.zeros(4, 50000, dtype=torch.long)
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    xt = process.corrupt(x0, t, torch.Generator().manual_seed(0))
    observed = (xt == MASK).double().mean(dim=1)
    expected = process.mask_probability(t.double())
    stderr = (expected * (1 - expected) / 50000).sqrt()
    assert torch.all((observed - expected).abs() < 5 * stderr + 1e-9)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_reveal_probability_is_alpha_ratio(schedule):
    process = make_process(schedule)
    sched = process.schedule
    t, s = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    expected = (sched.alpha(s) - sched.alpha(t)) / (1 - sched.alpha(t))
    assert process.reveal_probability(t, s).item() == pytest.approx(expected.item(), rel=1e-12)


def count_draws(process: MaskedDiffusion, model: torch.nn.Module, x0: torch.Tensor, seed: int) -> torch.Tensor:
    """One count-estimator NELBO draw per sequence of x0, in float64."""
    xt, weight = process.corrupt_by_count(x0, torch.Generator().manual_seed(seed))
    return (weight * process.masked_nll(model(xt), x0, xt).sum(dim=1)).double()


def test_count_estimator_oracle_nelbo_equals_length_times_entropy():
    length, draws = 16, 40000
    generator = torch.Generator().manual_seed(0)
    x0 = torch.multinomial(PI.float(), draws * length, replacement=True, generator=generator).view(draws, length)
    values = count_draws(MaskedDiffusion(build_schedule("linear"), MASK, PAD, estimator="count"), IIDOracle(PI.float()), x0, 1)
    mean, stderr = values.mean().item(), (values.std() / math.sqrt(draws)).item()
    assert abs(mean - length * entropy(PI)) < 4 * stderr, (mean, length * entropy(PI), stderr)


def test_count_estimator_agrees_with_the_time_estimator_and_has_lower_variance():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=8, context_length=12, d_model=16, n_layers=1, n_heads=2)).eval()
    draws = 6000
    x0 = torch.multinomial(PI.float(), draws * 12, replacement=True).view(draws, 12)
    with torch.no_grad():
        by_time = nelbo_draws(make_process("linear"), model, x0, seed=7)
        by_count = count_draws(MaskedDiffusion(build_schedule("linear"), MASK, PAD, estimator="count"), model, x0, 8)
    se = math.hypot(by_time.std().item(), by_count.std().item()) / math.sqrt(draws)
    assert abs(by_time.mean().item() - by_count.mean().item()) < 4 * se
    assert by_count.std() < by_time.std()


def test_count_corruption_masks_k_uniform_in_one_to_n_and_never_padding():
    process = MaskedDiffusion(build_schedule("linear"), MASK, PAD, estimator="count", antithetic=False)
    x0 = torch.zeros(60000, 8, dtype=torch.long)
    x0[:, 6:] = PAD  # n = 6 real tokens per row
    xt, weight = process.corrupt_by_count(x0, torch.Generator().manual_seed(0))
    assert not (xt[:, 6:] == MASK).any()
    k = (xt == MASK).sum(dim=1)
    counts = torch.bincount(k, minlength=7)[1:].double()
    assert counts.sum() == 60000 and (torch.bincount(k, minlength=7)[0] == 0)
    assert chisquare(counts.numpy()).pvalue > 1e-4
    torch.testing.assert_close(weight, 6 / k.float())
    positions = (xt[:, :6] == MASK).double().mean(dim=0)  # every real position equally likely
    assert chisquare((positions * 60000).numpy()).pvalue > 1e-4


def test_count_estimator_refuses_a_time_conditioned_model():
    process = MaskedDiffusion(build_schedule("linear"), MASK, PAD, estimator="count")
    model = Transformer(ModelConfig(vocab_size=8, context_length=12, d_model=16, n_layers=1, n_heads=2,
                                    time_conditioning=True))
    with pytest.raises(DDLMError, match="estimator=time"):
        process.loss(model, torch.zeros(2, 12, dtype=torch.long))
