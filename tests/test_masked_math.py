"""The masked-diffusion items of MATH.md, each against an analytic reference."""

from __future__ import annotations

import math

import pytest
import torch

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
    logits = model(xt, process.model_noise(model, t))
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
