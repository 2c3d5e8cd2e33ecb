"""Score-entropy discrete diffusion (SEDD, arXiv:2310.16834) on the absorbing or uniform graph.

Forward: a continuous-time Markov chain with rate sigma(t) Q and total noise sigma_bar(t).
In both graphs a token jumps to a target distribution:
p(x_t = y | x0) = exp(-sigma_bar) [y = x0] + (1 - exp(-sigma_bar)) target(y), with target
MASK (absorbing) or uniform over the N real tokens (uniform). Real tokens are every id but
MASK and PAD (EOS is one). The network predicts log-scores log s_y, estimates of the ratios
p_t(x_t with position i set to y) / p_t(x_t); the loss is the denoising score entropy (DSE)
integrated over t plus a prior term: a per-token NELBO in nats, like every other process.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch

from ddlm.errors import DDLMError
from ddlm.processes.base import ContinuousTime, LossOutput, Vocabulary
from ddlm.processes.schedules import Schedule, schedule_from_config


def log_expm1(x: torch.Tensor) -> torch.Tensor:
    """log(exp(x) - 1) for x > 0, without overflow or cancellation at either end."""
    return x + torch.log(-torch.expm1(-x))


# ----- graphs -----


class Graph(ABC):
    """The states of one SEDD graph, its forward jumps and its graph-specific formulas.

    Methods taking ``xt`` (P,) and returning (P, V) work on rows of positions; ``sigma_bar``
    is then a (P,) tensor or a float.
    """

    name: str

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        self.real_ids = torch.tensor([i for i in range(vocab.size) if i not in (vocab.mask_id, vocab.pad_id)])
        self.num_real = len(self.real_ids)

    @property
    @abstractmethod
    def non_states(self) -> list[int]:
        """Ids that are not states of the graph: their log-score is -inf."""

    def real_columns(self, device: torch.device) -> torch.Tensor:
        """(V,) bool: True at real tokens."""
        return torch.zeros(self.vocab.size, dtype=torch.bool, device=device).index_fill_(
            0, self.real_ids.to(device), True
        )

    @abstractmethod
    def draw_target(self, u: torch.Tensor) -> torch.Tensor:
        """Tokens drawn from the jump target (also the prior), one per float64 uniform in ``u``."""

    def corrupt(self, x0: torch.Tensor, sigma_bar: torch.Tensor, generator: torch.Generator | None,
                maskable: torch.Tensor | None = None) -> torch.Tensor:
        """x_t for x0 (B, L) at total noise sigma_bar (B,): each non-pad token (or each ``maskable``
        position) jumps w.p. 1 - e^-sigma_bar."""
        u = torch.rand((2, *x0.shape), dtype=torch.float64, device=x0.device, generator=generator)
        movable = x0 != self.vocab.pad_id if maskable is None else maskable
        jump = (u[0] < -torch.expm1(-sigma_bar.double())[:, None]) & movable
        return torch.where(jump, self.draw_target(u[1]), x0)

    @abstractmethod
    def can_move(self, xt: torch.Tensor) -> torch.Tensor:
        """Positions whose token the reverse process may change (they alone carry loss)."""

    @abstractmethod
    def rescale(self, logits: torch.Tensor, sigma_bar: torch.Tensor) -> torch.Tensor:
        """Network output -> log-scores; ``sigma_bar`` broadcasts against ``logits`` (..., V)."""

    @abstractmethod
    def rate_into(self, xt: torch.Tensor) -> torch.Tensor:
        """(P, V) forward rates Q(y -> x_t) for y != x_t; zero at y = x_t and at non-states."""

    @abstractmethod
    def log_ratio(self, xt: torch.Tensor, x0: torch.Tensor, sigma_bar: torch.Tensor) -> torch.Tensor:
        """(P, V) log r_y = log p(y | x0) - log p(x_t | x0) (-inf where r_y = 0), at movable positions."""

    @abstractmethod
    def analytic_step(
        self, score: torch.Tensor, xt: torch.Tensor, sigma_bar_t: float, sigma_bar_s: float
    ) -> torch.Tensor:
        """(P, V) Tweedie tau-leaping probabilities of x_s given the scores (P, V) at movable positions."""

    @abstractmethod
    def prior_kl(self, sigma_bar: float) -> float:
        """KL(p(x_1 | x0) || prior) per token when sigma_bar(1) = ``sigma_bar``."""


class AbsorbingGraph(Graph):
    """Real tokens plus MASK; every real token jumps to MASK at rate 1.

    Log-scores (SEDD's rescaling): log s_y = output_y - log(expm1(sigma_bar)) - log N. The
    exact ratio at a masked position is p(x0_i = y | unmasked) / expm1(sigma_bar), so the
    network output is log p(y | unmasked) + log N: a noise-free, roughly centred quantity.
    Only masked positions carry loss, so the rescaling is applied everywhere.

    Prior: MASK with probability 1 - e^-sigma_bar(1), else a uniform real token (the forward
    marginal at t = 1 of a uniform x0); KL = e^-sigma_bar(1) log N. The all-MASK sampler start
    differs from it by e^-sigma_bar(1) in total variation (1e-3 for the log-linear noise, 2e-9
    for the geometric one), but an all-MASK prior would make the KL term infinite for any
    finite sigma_bar(1).
    """

    name = "absorb"

    @property
    def non_states(self) -> list[int]:
        return [self.vocab.pad_id]

    def draw_target(self, u: torch.Tensor) -> torch.Tensor:
        return torch.full(u.shape, self.vocab.mask_id, dtype=torch.long, device=u.device)

    def can_move(self, xt: torch.Tensor) -> torch.Tensor:
        return xt == self.vocab.mask_id

    def rescale(self, logits: torch.Tensor, sigma_bar: torch.Tensor) -> torch.Tensor:
        return logits - log_expm1(sigma_bar) - math.log(self.num_real)

    def rate_into(self, xt: torch.Tensor) -> torch.Tensor:
        return ((xt == self.vocab.mask_id)[:, None] & self.real_columns(xt.device)).float()

    def log_ratio(self, xt: torch.Tensor, x0: torch.Tensor, sigma_bar: torch.Tensor) -> torch.Tensor:
        # at x_t = MASK: r_y = e^-sb / (1 - e^-sb) = 1 / expm1(sb) for y = x0, else 0
        log_ratio = torch.full((len(xt), self.vocab.size), -torch.inf, device=xt.device)
        return log_ratio.scatter(-1, x0[:, None], -log_expm1(sigma_bar.float())[:, None])

    def analytic_step(
        self, score: torch.Tensor, xt: torch.Tensor, sigma_bar_t: float, sigma_bar_s: float
    ) -> torch.Tensor:
        # reveal y: s_y expm1(sb_t - sb_s); stay masked: (1 - e^-sb_s) / (1 - e^-sb_t)
        stay = math.expm1(-sigma_bar_s) / math.expm1(-sigma_bar_t)
        mask = torch.tensor([self.vocab.mask_id], device=score.device)
        return (score * math.expm1(sigma_bar_t - sigma_bar_s)).index_fill(-1, mask, stay)

    def prior_kl(self, sigma_bar: float) -> float:
        return math.exp(-sigma_bar) * math.log(self.num_real)


class UniformGraph(Graph):
    """The N real tokens, no MASK; every token jumps to each other one at rate 1/N.

    Log-scores are the network output itself (SEDD does not rescale the uniform graph).
    Prior: uniform over the N real tokens.
    """

    name = "uniform"

    @property
    def non_states(self) -> list[int]:
        return [self.vocab.mask_id, self.vocab.pad_id]

    def draw_target(self, u: torch.Tensor) -> torch.Tensor:
        index = (u * self.num_real).long().clamp_max(self.num_real - 1)
        return self.real_ids.to(u.device)[index]

    def can_move(self, xt: torch.Tensor) -> torch.Tensor:
        return xt != self.vocab.pad_id

    def rescale(self, logits: torch.Tensor, sigma_bar: torch.Tensor) -> torch.Tensor:
        return logits

    def rate_into(self, xt: torch.Tensor) -> torch.Tensor:
        columns = torch.arange(self.vocab.size, device=xt.device)
        others = self.real_columns(xt.device) & (columns != xt[:, None])
        return others.float() / self.num_real

    def log_ratio(self, xt: torch.Tensor, x0: torch.Tensor, sigma_bar: torch.Tensor) -> torch.Tensor:
        # p(x0 | x0) = a = e^-sb + (1 - e^-sb)/N and p(y | x0) = b = (1 - e^-sb)/N for y != x0,
        # so log(a / b) = log1p(N / expm1(sb)). Three cases:
        #   x_t = x0: r_y = b/a for every y;  x_t != x0: r_{x0} = a/b and r_y = 1 for the other y.
        log_a_over_b = torch.log1p(self.num_real / torch.expm1(sigma_bar.float()))
        moved = xt != x0
        other = torch.where(moved, torch.zeros_like(log_a_over_b), -log_a_over_b)
        at_x0 = torch.where(moved, log_a_over_b, other)
        return other[:, None].expand(-1, self.vocab.size).scatter(-1, x0[:, None], at_x0[:, None])

    def analytic_step(
        self, score: torch.Tensor, xt: torch.Tensor, sigma_bar_t: float, sigma_bar_s: float
    ) -> torch.Tensor:
        # p(x_s = y | x_t) = [p_s(y) / p_t(x_t)] p(x_t | x_s = y), with p_s = exp(delta Q) p_t
        # (the forward transition inverted; Q is symmetric) and delta = sb_t - sb_s.
        delta, n = sigma_bar_t - sigma_bar_s, self.num_real
        backward = math.exp(delta) * score - math.expm1(delta) / n * score.sum(-1, keepdim=True)
        forward = self.real_columns(score.device).double() * (-math.expm1(-delta) / n)
        forward = forward.expand_as(score).scatter_add(
            -1, xt[:, None], torch.full_like(score[:, :1], math.exp(-delta))
        )
        return backward * forward

    def prior_kl(self, sigma_bar: float) -> float:
        # p(x_1 | x0) puts a = e^-sb + (1 - e^-sb)/N on x0 and b = (1 - e^-sb)/N on each other token
        n, stay = self.num_real, math.exp(-sigma_bar)
        a, b = stay + (1 - stay) / n, (1 - stay) / n
        return a * math.log1p((n - 1) * stay) + (n - 1) * b * math.log1p(-stay)


GRAPHS: dict[str, type[Graph]] = {"sedd-absorb": AbsorbingGraph, "sedd-uniform": UniformGraph}
# SEDD's choices: log-linear noise for the absorbing graph, geometric (1e-4 to 20) for the uniform one
DEFAULT_SCHEDULES = {"sedd-absorb": "linear", "sedd-uniform": "geometric"}
# the log-linear noise keeps eps = 1e-3 here, so that sigma_bar(1) = log(1000) is finite
SCHEDULE_DEFAULTS = {"linear": {"eps": 1e-3}}


def score_entropy_sum(log_score: torch.Tensor, log_ratio: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """sum_y rate_y [s_y - r_y log s_y + K(r_y)] over the last axis, K(a) = a (log a - 1).

    Computed as r_y g(log s_y - log r_y) with g(u) = e^u - 1 - u (expand to see it is the
    same expression; r_y = 0 leaves s_y): exactly 0 at s = r, never negative, and free of
    the cancellation between large terms that the literal form suffers at small sigma_bar.
    Columns with rate 0 are dropped and made finite, so no NaN reaches the gradient.
    """
    used = rate > 0
    has_ratio = log_ratio > -torch.inf
    log_score = log_score.masked_fill(~used, 0.0)
    log_ratio = log_ratio.masked_fill(~has_ratio, 0.0)
    u = log_score - log_ratio
    terms = torch.where(has_ratio, log_ratio.exp() * (torch.expm1(u) - u), log_score.exp())
    return (rate * terms).sum(-1)


# ----- the process -----


class ScoreEntropyDiffusion(ContinuousTime):
    """SEDD on the graph named by ``name`` ("sedd-absorb" or "sedd-uniform").

    The ``schedule`` is read as total noise sigma_bar(t) and rate sigma(t); it must leave
    sigma_bar(1) finite (the prior term and the sampler's start depend on it).
    """

    noise_conditioning = "required"
    causal = False

    def __init__(self, name: str, schedule: Schedule, vocab: Vocabulary, eps: float = 1e-3, antithetic: bool = True):
        if name not in GRAPHS:
            raise DDLMError(f"unknown SEDD process {name!r}; choose one of {sorted(GRAPHS)}")
        if not math.isfinite(float(schedule.total(torch.tensor(1.0, dtype=torch.float64)))):
            raise DDLMError(f"SEDD needs a noise schedule with finite total noise at t = 1, which {schedule.to_dict()} "
                            "is not; use schedule geometric, or linear with eps > 0")
        self.name = name
        self.graph = GRAPHS[name](vocab)
        self.schedule = schedule
        self.mask_id = vocab.mask_id
        self.pad_id = vocab.pad_id
        self.eps = eps
        self.antithetic = antithetic

    @classmethod
    def from_config(cls, config: dict[str, Any], vocab: Vocabulary) -> ScoreEntropyDiffusion:
        """The process ``config`` describes (``to_dict``'s keys; a missing schedule is the graph's default)."""
        name = config.get("name", "sedd-absorb")
        schedule = schedule_from_config(config.get("schedule"), DEFAULT_SCHEDULES.get(name, "geometric"), SCHEDULE_DEFAULTS)
        return cls(name, schedule, vocab, eps=config.get("eps", 1e-3), antithetic=config.get("antithetic", True))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "schedule": self.schedule.to_dict(), "eps": self.eps, "antithetic": self.antithetic}

    # noise and corruption

    def sigma_bar(self, t: torch.Tensor) -> torch.Tensor:
        """Total noise at time t."""
        return self.schedule.total(t)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise rate d sigma_bar / dt at time t."""
        return self.schedule.rate(t)

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t for x0 (B, L) at times t (B,); pad positions are never corrupted."""
        return self.graph.corrupt(x0, self.sigma_bar(t), generator)

    def model_noise(self, t: torch.Tensor) -> torch.Tensor:
        """The noise level the model is given at time t: 1 - e^-sigma_bar(t) in [0, 1] (dtype of t)."""
        return -torch.expm1(-self.sigma_bar(t))

    def can_move(self, xt: torch.Tensor) -> torch.Tensor:
        """Positions the reverse process may change: MASKs (absorbing) or every non-pad token (uniform)."""
        return self.graph.can_move(xt)

    def draw_prior(self, u: torch.Tensor) -> torch.Tensor:
        """Tokens from the sampler's prior (all MASK, or uniform real tokens), one per float64 uniform in ``u``."""
        return self.graph.draw_target(u)

    # scores and loss

    def log_score(self, logits: torch.Tensor, xt: torch.Tensor, sigma_bar: torch.Tensor) -> torch.Tensor:
        """float32 log-scores (..., V) from logits; ``sigma_bar`` broadcasts against ``xt``.

        Non-states get -inf; the current token gets 0 (its ratio to itself is 1: it never enters
        the loss or the steps as a jump target).
        """
        never = torch.tensor(self.graph.non_states, device=logits.device)
        sigma_bar = sigma_bar.to(device=logits.device, dtype=torch.float32)[..., None]
        log_score = self.graph.rescale(logits.float(), sigma_bar).index_fill(-1, never, -torch.inf)
        return log_score.scatter(-1, xt[..., None], 0.0)

    def score_entropy(
        self, log_score: torch.Tensor, xt: torch.Tensor, x0: torch.Tensor, sigma_bar: torch.Tensor
    ) -> torch.Tensor:
        """Per position sum_{y != x_t} Q(y -> x_t) [s_y - r_y log s_y + K(r_y)] (float32, shape of xt).

        The DSE of MATH.md without its sigma(t) factor; zero at pad positions and, for the
        absorbing graph, at visible positions. ``sigma_bar`` broadcasts against ``xt``.
        """
        active = self.graph.can_move(xt) & (x0 != self.pad_id)
        sigma_bar = sigma_bar.to(xt.device).expand(xt.shape)[active]
        entropy = torch.zeros(xt.shape, dtype=torch.float32, device=xt.device)
        log_ratio = self.graph.log_ratio(xt[active], x0[active], sigma_bar)
        entropy[active] = score_entropy_sum(log_score[active], log_ratio, self.graph.rate_into(xt[active]))
        return entropy

    def prior_kl(self) -> float:
        """KL(p(x_1 | x0) || prior) per token, in nats (the same for every x0)."""
        return self.graph.prior_kl(float(self.sigma_bar(torch.tensor(1.0, dtype=torch.float64))))

    def nelbo_per_sequence(
        self, entropy: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, counted: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One NELBO draw per sequence (B,), in nats, from the per-position score entropy at times t.

        The integral of sigma(t) DSE over t in [eps, 1] is (1 - eps) times its mean under
        t ~ U[eps, 1]; the prior term is added per real token. The integral over [0, eps] is
        left out (as in SEDD and MDLM): it concerns the tokens still corrupted at t = eps, a
        fraction 1 - e^-sigma_bar(eps) (about 1e-4 geometric, 1e-3 log-linear). ``counted`` (B, L):
        the positions the prior term counts (default: the real tokens).
        """
        weight = ((1 - self.eps) * self.sigma(t.double())).float()
        real = (x0 != self.pad_id if counted is None else counted).sum(dim=1)
        return weight * entropy.sum(dim=1) + self.prior_kl() * real

    def loss(self, model: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None) -> LossOutput:
        """One Monte-Carlo draw of the NELBO per real (non-pad) token of the batch."""
        nelbo = self.nelbo_draw(model, x0, x0 != self.pad_id, generator).sum()
        return LossOutput.per_real_token(nelbo, x0, self.pad_id)

    def sft_loss(
        self, model: torch.nn.Module, x0: torch.Tensor, response: torch.Tensor, generator: torch.Generator | None = None
    ) -> LossOutput:
        """The NELBO of the response given the prompt: only response positions are corrupted, carry score
        entropy and the prior term; each row's draw is divided by its response length."""
        return LossOutput.per_response(self.nelbo_draw(model, x0, response, generator), response)

    def nelbo_draw(
        self, model: torch.nn.Module, x0: torch.Tensor, maskable: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """One NELBO draw per row (B,) in nats, of the ``maskable`` positions given the others (which stay
        clean and carry no loss, also on the uniform graph, where clean positions could move)."""
        t = self.sample_times(x0.shape[0], x0.device, generator)
        xt = self.graph.corrupt(x0, self.sigma_bar(t), generator, maskable)
        sigma_bar = self.sigma_bar(t)[:, None]
        log_score = self.log_score(model(xt, self.model_noise(t)), xt, sigma_bar)
        entropy = self.score_entropy(log_score, xt, x0, sigma_bar) * maskable
        return self.nelbo_per_sequence(entropy, t, x0, maskable)

    # reverse steps (rows of movable positions; probabilities before clipping and renormalising)

    def euler_step(self, log_score: torch.Tensor, xt: torch.Tensor, rate_dt: float) -> torch.Tensor:
        """(P, V) float64 Euler step: to y != x_t with probability rate_dt Q(y -> x_t) s_y, else stay.

        ``rate_dt`` is sigma(t) * dt; the stay probability may be negative for a large step.
        """
        jumps = rate_dt * self.graph.rate_into(xt).double() * log_score.double().exp()
        return jumps.scatter(-1, xt[:, None], 1 - jumps.sum(-1, keepdim=True))

    def analytic_step(
        self, log_score: torch.Tensor, xt: torch.Tensor, sigma_bar_t: float, sigma_bar_s: float
    ) -> torch.Tensor:
        """(P, V) float64 analytic (Tweedie tau-leaping) step from total noise sigma_bar_t down to sigma_bar_s.

        Sums to one at exact scores; sigma_bar_s = 0 is the final denoising step.
        """
        return self.graph.analytic_step(log_score.double().exp(), xt, sigma_bar_t, sigma_bar_s)
