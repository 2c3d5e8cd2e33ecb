"""ddlm models in EleutherAI's lm-evaluation-harness: the harness model ``ddlm`` and ``ddlm lm-eval``.

``loglikelihood(context, continuation)`` reads a canvas of the context's tokens followed by
the continuation's, cut from the left to the model's context:

- autoregressive: exact, the sum of next-token log-probabilities; greedy when every
  continuation token is the argmax.
- masked diffusion: LLaDA's ``get_log_likelihood``, an unbiased Monte Carlo estimate of a lower
  bound. Each draw takes l uniformly from 1..|c|, masks l of the |c| continuation tokens
  uniformly at random (the context stays clean) and scores (|c| / l) times the summed log p
  of the masked tokens; a model that sees the noise level is given the masked fraction
  l / |c|, as the sampler gives it. The estimate is the mean over ``mc_draws`` draws; l is
  stratified over the draws (each value equally often when |c| divides the draws), and the
  draws are seeded by the context, so the choices of one question share their randomness.
- block diffusion: the same estimator inside each block the continuation reaches, the
  earlier blocks clean (blocks start at the canvas's first position): the block-wise bound.

``estimator`` picks how a diffusion model's log-likelihood is computed (autoregressive models
ignore it):

- ``monte_carlo`` (the default): LLaDA's estimator above, ``mc_draws`` draws.
- ``left_to_right``: the continuation unmasked one token per step from the left, the log p of
  each true token summed: the exact log-likelihood of the one-token-per-step sampler with that
  order (the model given the masked fraction, as the sampler gives it). Deterministic, |c| rows
  per request; the documented choice for multiple choice. For a block model, left to right
  inside every block at once, the earlier blocks clean: block-size rows per request, the exact
  log-likelihood of the block sampler writing one token per step from each block's left.
- ``random_order`` (masked models): the same along ``mc_draws`` uniformly random orders (seeded by
  the context), averaged: unbiased for the same bound as ``monte_carlo`` (over a random order, the
  token unmasked at the step with l masked is uniform among them), each draw using every token.

``masked_future`` (masked models only; autoregressive and block models ignore it): the canvas goes on
after the continuation with MASK positions up to the model's context, as every training window runs
to its full length; they are hidden in every row and never scored, and the noise level the model is
given is the masked fraction of everything after the context (continuation and future), as the
sampler writing that whole canvas gives it. With any estimator; ``left_to_right`` so unmasks the
continuation from the left with the rest of the window still masked.

``is_greedy`` of a diffusion model: ddlm's greedy sampler (temperature 0, confidence policy,
one token per step) writes the continuation. ``greedy_check=false`` skips that check and
reports False; multiple-choice tasks, which ignore it, run faster so. It is decided on the canvas
without the masked future.
``loglikelihood_rolling`` scores a document in windows of the model's context, each the
continuation of the text before it (the last window is filled up with earlier text): the exact
log-likelihood of an autoregressive model, a lower bound for a diffusion model.
``generate_until`` samples through the model's :class:`DiffusionPipeline` with the sampler
options of ``model_args`` and of each request's ``gen_kwargs``, cut at the stop sequences.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ddlm.bundled import DEFAULT_MODEL
from ddlm.device import autocast
from ddlm.errors import DDLMError
from ddlm.families import get_family, option_table
from ddlm.pipeline import DiffusionPipeline
from ddlm.processes.block import training_attention
from ddlm.samplers import SamplerOptions, SamplerStep, last_steps
from ddlm.schema import check_integer

try:
    import lm_eval.models  # noqa: F401  (the harness's own models, registered lazily, stay findable beside ddlm)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:
    raise DDLMError("the lm-evaluation-harness integration needs lm-eval: pip install 'ddlm[eval]'") from None

TASKS_DIR = Path(__file__).parent / "tasks"  # the tasks ddlm ships: shakespeare_next_line
SCORED_PROCESSES = ("ar", "masked", "block")
DEFAULT_MAX_GEN_TOKS = 256
LOGITS_PER_CALL = 2**27  # about the most scores (rows x width x vocabulary) one model call returns: the rows of a
# long continuation over a large vocabulary (|c| of them left to right) go over several calls
HARNESS_DEVICE = "cuda:0"  # the device the harness's command line passes when given no --device
GREEDY = SamplerOptions(temperature=0.0, policy="confidence", seed=0)  # the sampler that decides is_greedy
ESTIMATORS = ("monte_carlo", "left_to_right", "random_order")  # of a masked model's log-likelihood
MODEL_ARGS = ("pretrained", "estimator", "masked_future", "mc_draws", "batch_size", "device", "precision",
              "greedy_check", "trust_remote_code")

Pair = tuple[list[int], list[int]]  # (context, continuation) token ids


def draw_masks(groups: torch.Tensor, draws: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``draws`` draws of the LLaDA estimator's masks over a continuation, and their weights.

    ``groups`` (n,): the group (block) of each continuation position, 0, 1, ... in order; the
    masked process has one. In a group of n_g positions a draw masks l of them uniformly at
    random, l uniform in 1..n_g (stratified over the draws), each with weight n_g / l.
    Returns ``masked`` (draws, n) bool and ``weight`` (draws, n) float64, 0 where not masked.
    """
    sizes = torch.bincount(groups)
    offsets = torch.rand(len(sizes), generator=generator, dtype=torch.float64)
    uniforms = (offsets + torch.arange(draws, dtype=torch.float64)[:, None] / draws) % 1
    counts = (1 + (uniforms * sizes).long()).clamp(max=sizes)[:, groups]  # (draws, n): l of each position's group
    scores = torch.rand((draws, len(groups)), generator=generator, dtype=torch.float64)
    rank = (groups * 2 + scores).argsort(dim=1).argsort(dim=1)  # groups in order, a random order within each
    rank = rank - (torch.cumsum(sizes, 0) - sizes)[groups]  # the rank within the group
    masked = rank < counts
    return masked, torch.where(masked, sizes[groups].double() / counts, 0.0)


def order_masks(orders: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows that unmask a continuation one token per step along each of ``orders``.

    ``orders`` (K, n): permutations of the n positions, in the order they are unmasked. Row k of
    order j hides ``orders[j, k:]`` and scores position ``orders[j, k]`` with weight 1.
    Returns ``masked`` and ``weight``, both (K * n, n).
    """
    count, n = orders.shape
    unmasked_at = orders.argsort(dim=1)[:, None, :]  # (K, 1, n): the step at which each position is unmasked
    steps = torch.arange(n)[None, :, None]
    masked = (unmasked_at >= steps).reshape(count * n, n)
    return masked, (unmasked_at == steps).reshape(count * n, n).double()


def context_seed(seed: int, context: Sequence[int]) -> int:
    """A seed from ``seed`` and the context's tokens, the same in every run and request order."""
    digest = hashlib.sha256(f"{seed}:{list(context)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class Scorer:
    """log p(continuation | context) under a pipeline's model, as the module notes say, in batches."""

    def __init__(self, pipe: DiffusionPipeline, draws: int = 32, seed: int = 0, estimator: str = "monte_carlo",
                 masked_future: bool = False):
        if pipe.process.name not in SCORED_PROCESSES:
            raise DDLMError(f"log-likelihoods need an autoregressive, masked or block model, not {pipe.process.name!r}; "
                            "score SEDD models with `ddlm eval` (their NELBO)")
        check_integer("mc_draws", draws, minimum=1)
        check_estimator(estimator)
        self.pipe, self.draws, self.seed = pipe, draws, seed
        if estimator == "random_order" and pipe.process.name == "block":
            raise DDLMError("the random_order estimator is for masked models; score a block model with "
                            "left_to_right or monte_carlo", field="estimator")
        self.estimator = estimator if pipe.process.name != "ar" else "exact"
        self.future = flag("masked_future", masked_future) and pipe.process.name == "masked"
        self.model, self.process, self.tokenizer = pipe.model, pipe.process, pipe.tokenizer
        self.exact = self.process.name == "ar"
        # text one canvas holds: the autoregressive model also reads one token it does not predict
        self.room = pipe.context_length + (1 if self.exact else 0)

    def canvas(self, context: list[int], continuation: list[int]) -> tuple[list[int], int, int]:
        """The tokens of a pair as the model reads them, and where the continuation starts and ends among them.

        The autoregressive model reads end-of-text and then the text, one position behind its targets;
        with ``masked_future`` MASK positions follow the continuation up to the model's context.
        """
        if len(continuation) > self.pipe.context_length:
            raise DDLMError(f"a continuation of {len(continuation)} tokens does not fit the model's context of "
                            f"{self.pipe.context_length}; shorten it or use a model with a longer context")
        text = [*context, *continuation]
        tokens = [self.tokenizer.eos_id, *text][-self.room:] if self.exact else text[-self.room:]
        start, end = len(tokens) - len(continuation), len(tokens)
        return tokens + [self.process.mask_id] * (self.room - end if self.future else 0), start, end

    def windows(self, tokens: list[int]) -> list[Pair]:
        """A document as pairs: chunks of the model's context, each after as much of the text before it as fits."""
        chunk = self.pipe.context_length
        return [(tokens[max(0, start - (self.room - len(piece))) : start], piece)
                for start in range(0, len(tokens), chunk) for piece in [tokens[start : start + chunk]]]

    @torch.no_grad()
    def score(self, pairs: Sequence[Pair], batch_size: int, progress: bool = False) -> list[tuple[float, bool | None]]:
        """(log p, greedy) of each (context, continuation) pair: log p is a lower-bound estimate for a diffusion
        model, whose greedy is None (see :meth:`greedy`). ``batch_size`` pairs share one model call."""
        check_integer("batch_size", batch_size, minimum=1)
        results: list[tuple[float, bool | None]] = [(0.0, True)] * len(pairs)  # an empty continuation: log 1
        order = sorted((i for i, (_, continuation) in enumerate(pairs) if continuation),
                       key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))  # longest first: little padding
        for first in tqdm(range(0, len(order), batch_size), desc="loglikelihood", disable=not progress, leave=False):
            chunk = order[first : first + batch_size]
            for index, result in zip(chunk, self.score_batch([pairs[i] for i in chunk])):
                results[index] = result
        return results

    def score_batch(self, pairs: list[Pair]) -> list[tuple[float, bool | None]]:
        """One model call for ``pairs``, the rows of each as :meth:`plan` lays them out."""
        canvases = [self.canvas(*pair) for pair in pairs]
        plans = [self.plan(context, start, end) for (context, _), (_, start, end) in zip(pairs, canvases)]
        rows, width = sum(len(hidden) for hidden, _ in plans), max(len(tokens) for tokens, _, _ in canvases)
        x0 = torch.full((rows, width), self.tokenizer.pad_id, dtype=torch.long)
        masked = torch.zeros((rows, width), dtype=torch.bool)
        weight = torch.zeros((rows, width), dtype=torch.float64)
        span = torch.zeros(rows)  # positions after the context in each row: the continuation and any future
        owner = torch.zeros(rows, dtype=torch.long)  # the pair of each row
        first = 0
        for index, ((tokens, start, end), (hidden, weights)) in enumerate(zip(canvases, plans)):
            own = slice(first, first + len(hidden))
            x0[own, : len(tokens)] = torch.tensor(tokens)
            masked[own, start:end], weight[own, start:end] = hidden, weights
            masked[own, end : len(tokens)] = True  # the masked future: hidden in every row, never scored
            span[own], owner[own], first = len(tokens) - start, index, first + len(hidden)
        device = self.pipe.device
        x0, masked, weight, span = x0.to(device), masked.to(device), weight.to(device), span.to(device)
        per_row = torch.zeros(rows, dtype=torch.float64, device=device)
        greedy_row = torch.ones(rows, dtype=torch.bool, device=device)
        call_rows = max(1, LOGITS_PER_CALL // (width * self.tokenizer.vocab_size))
        for first in range(0, rows, call_rows):
            part = slice(first, first + call_rows)
            per_row[part], greedy_row[part] = self.score_rows(x0[part], masked[part], weight[part], span[part])
        values = torch.zeros(len(pairs), dtype=torch.float64, device=device).index_add_(0, owner.to(device), per_row)
        if not self.exact:
            return [(value, None) for value in values.tolist()]
        return list(zip(values.tolist(), greedy_row.tolist()))

    def score_rows(self, x0: torch.Tensor, masked: torch.Tensor, weight: torch.Tensor,
                   span: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One model call: each row's weighted sum of log p at its scored positions, and, for the autoregressive
        model, whether its argmax is the text at each of them (True for diffusion rows: not decided here)."""
        with autocast(x0.device, self.pipe.precision):
            if self.exact:  # position i predicts token i + 1
                logits = self.model(x0[:, :-1], self.process.model_noise(len(x0), x0.device))
                x0, weight = x0[:, 1:], weight[:, 1:]
            else:
                logits = self.diffusion_logits(x0, masked, span)
        log_probs = self.process.log_probs(logits)
        targets = torch.where(weight != 0, x0, 0)  # the future's MASK is never a target
        picked = torch.where(weight != 0, log_probs.gather(-1, targets[..., None]).squeeze(-1), 0.0)
        scores = (picked.double() * weight).sum(dim=1)
        if not self.exact:  # a diffusion model's greedy is decided by its sampler (greedy()), not an argmax
            return scores, torch.ones(len(x0), dtype=torch.bool, device=x0.device)
        return scores, ((log_probs.argmax(dim=-1) == x0) | (weight == 0)).all(dim=1)

    def plan(self, context: list[int], start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows that score the continuation at canvas positions ``start:end``: which of its positions each
        row hides (R, n) and the weight of each position's log p (R, n), summed over rows to the estimate."""
        n = end - start
        if self.exact:
            return torch.zeros((1, n), dtype=torch.bool), torch.ones((1, n), dtype=torch.float64)
        if self.estimator == "left_to_right":  # row k hides the positions from the k-th of each group on
            rank = self.rank_in_group(start, end)
            steps = torch.arange(int(rank.max()) + 1)[:, None]
            return rank >= steps, (rank == steps).double()
        generator = torch.Generator().manual_seed(context_seed(self.seed, context))
        if self.estimator == "random_order":
            masked, weight = order_masks(torch.stack([torch.randperm(n, generator=generator) for _ in range(self.draws)]))
        else:
            masked, weight = draw_masks(self.groups(start, end), self.draws, generator)
        return masked, weight / self.draws

    def groups(self, start: int, end: int) -> torch.Tensor:
        """The estimator's group of each continuation position: its block, or one group for masked diffusion."""
        positions = torch.arange(start, end)
        if self.process.name != "block":
            return torch.zeros_like(positions)
        blocks = positions // self.process.block_size
        return blocks - blocks[0]

    def rank_in_group(self, start: int, end: int) -> torch.Tensor:
        """Where each continuation position stands in its group, counted from the left: in the whole continuation
        for masked diffusion, in its block (from the block's first position, context or not) for a block model."""
        positions = torch.arange(start, end)
        return positions % self.process.block_size if self.process.name == "block" else positions - start

    def diffusion_logits(self, x0: torch.Tensor, masked: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
        """Scores at every position of ``x0`` with the ``masked`` positions hidden (and padding)."""
        real = x0 != self.tokenizer.pad_id
        key_mask = None if bool(real.all()) else real
        xt = torch.where(masked, torch.full_like(x0, self.process.mask_id), x0)
        if self.process.name == "masked":
            noise = masked.sum(dim=1) / span  # the masked fraction after the context (l / |c| with no future)
            return self.model(xt, noise.float(), key_mask=key_mask)
        length = x0.shape[1]  # block diffusion's one-pass layout [x_t, x_0], as in its training
        shifted = getattr(self.model, "shifted", False)  # position i reads token i - 1
        inputs = {"inputs": self.process.shifted_inputs(self.model, xt, x0, self.process.block_size)} if shifted else {}
        logits = self.model(torch.cat((xt, x0), dim=1), attention=training_attention(length, self.process.block_size,
                                                                                      x0.device),
                            positions=torch.arange(length, device=x0.device).repeat(2),
                            key_mask=None if key_mask is None else key_mask.repeat(1, 2), **inputs)
        return logits[:, :length]

    def greedy(self, pairs: Sequence[Pair], batch_size: int) -> list[bool]:
        """Whether ddlm's greedy sampler (one token per step, the most confident first) writes each continuation."""
        results = [True] * len(pairs)
        by_length: dict[int, list[int]] = {}
        for index, (_, continuation) in enumerate(pairs):
            if continuation:
                by_length.setdefault(len(continuation), []).append(index)
        for length, indices in by_length.items():
            rows = [[*tokens[:start], *[None] * length] for tokens, start, _ in (self.canvas(*pairs[i]) for i in indices)]
            for last in last_steps(self.pipe.run_batches(SamplerOptions.build(GREEDY, steps=length), rows, batch_size)):
                for row in range(last.tokens.shape[0]):
                    index = indices[last.first_sample + row]
                    results[index] = generated_ids(last, row) == pairs[index][1]
        return results


def generated_ids(step: SamplerStep, row: int) -> list[int]:
    """The tokens a sampler wrote in ``row`` of a pipeline's step (its canvas set)."""
    return step.tokens[row][step.canvas.generated[row]].tolist()


def flag(name: str, value: bool | str) -> bool:
    """A true/false model argument (a bool, or the words from a command line); a one-line error otherwise."""
    words = {"true": True, "false": False}
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    raise DDLMError(f"{name} must be true or false, got {value!r}")


def check_estimator(estimator: str) -> None:
    """A one-line error unless ``estimator`` is one of ESTIMATORS."""
    if estimator not in ESTIMATORS:
        raise DDLMError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")


def batch_size_of(value: int | str) -> int:
    """Requests per model call from model_args or --batch_size (a number; the harness's ``auto`` is refused)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DDLMError(f"batch_size must be a whole number of requests per model call, got {value!r}; "
                        "pass e.g. --batch_size 16")
    check_integer("batch_size", value, minimum=1)
    return value


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any of the (non-empty) ``stops``."""
    return text[: min((text.find(stop) for stop in stops if stop and stop in text), default=len(text))]


@register_model("ddlm")
class DDLMHarnessModel(LM):
    """A ddlm model in lm-evaluation-harness: ``lm_eval --model ddlm --model_args pretrained=NAME_OR_DIR,...``.

    ``pretrained``: a model directory, a bundled model name or a local Hugging Face diffusion LM
    (or a :class:`DiffusionPipeline`, from Python). ``estimator``: how a masked model's
    log-likelihood is computed (``monte_carlo``, ``left_to_right`` or ``random_order``, see the
    module notes). ``masked_future``: score a masked model's continuation with MASK positions after it
    up to the model's context (see the module notes). ``mc_draws``: Monte Carlo draws (masks or orders)
    per diffusion log-likelihood. ``batch_size``: requests per model call, each ``mc_draws`` rows for a
    diffusion model (|c| rows left to right, ``mc_draws`` * |c| in random orders; rows whose scores
    would pass ``LOGITS_PER_CALL`` go over several calls). ``greedy_check``: decide a diffusion
    model's ``is_greedy`` with the greedy sampler (see the module notes). Every other argument is a
    :class:`SamplerOptions` field (``steps``, ``policy``, ``block_length``, ``seed``, ...), over the
    model's own sampler defaults: the defaults of ``generate_until``, whose ``gen_kwargs`` replace
    them per request; ``seed`` (default 0) also seeds the Monte Carlo draws.
    """

    def __init__(self, pretrained: str | DiffusionPipeline = DEFAULT_MODEL, mc_draws: int = 32,
                 batch_size: int | str = 1, device: str = "auto", precision: str = "auto",
                 greedy_check: bool = True, trust_remote_code: bool = False, estimator: str = "monte_carlo",
                 masked_future: bool | str = False, **sampler_options: Any):
        super().__init__()
        unknown = sorted(set(sampler_options) - set(option_table()))
        if unknown:
            raise DDLMError(f"the ddlm model has no argument {', '.join(unknown)}; it takes {', '.join(MODEL_ARGS)} "
                            f"and the sampler options {', '.join(option_table())}")
        check_integer("mc_draws", mc_draws, minimum=1)
        check_estimator(estimator)
        self.masked_future = flag("masked_future", masked_future)
        self.pipe = pretrained if isinstance(pretrained, DiffusionPipeline) else DiffusionPipeline.from_pretrained(
            str(pretrained), device=device, precision=precision, trust_remote_code=trust_remote_code)
        self.options = self.pipe.sampler_options(**{"seed": 0, **sampler_options})
        get_family(self.pipe.process.name).check(self.options)
        self.mc_draws, self.batch_size, self.greedy_check = mc_draws, batch_size_of(batch_size), bool(greedy_check)
        self.estimator = estimator

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None):
        """The model of ``model_args``; the harness's own flags (--batch_size, --device) fill only what they leave out."""
        extra = {key: value for key, value in (additional_config or {}).items() if value is not None and key not in arg_dict}
        extra.pop("max_batch_size", None)  # only meaningful with the harness's batch_size=auto, which ddlm refuses
        if extra.get("device") == HARNESS_DEVICE and not torch.cuda.is_available():
            del extra["device"]  # the harness's default, not a choice: ddlm's auto
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    @functools.cached_property
    def scorer(self) -> Scorer:
        return Scorer(self.pipe, self.mc_draws, self.options.seed, self.estimator, self.masked_future)

    def encode_pair(self, context: str, continuation: str) -> Pair:
        """Token ids of both parts, split where the context's own tokens end (as the whole text tokenises)."""
        encode = self.pipe.tokenizer.encode
        context_ids = encode(context) if context else []
        whole = encode(context + continuation)
        if whole[: len(context_ids)] == context_ids:
            return context_ids, whole[len(context_ids) :]
        return context_ids, encode(continuation)  # a token spans the boundary: tokenise the parts apart

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) of each request; a lower-bound estimate for diffusion models."""
        pairs = [self.encode_pair(*request.args) for request in requests]
        scored = self.scorer.score(pairs, self.batch_size, progress=not disable_tqdm)
        if not self.scorer.exact:
            greedy = self.scorer.greedy(pairs, self.batch_size) if self.greedy_check else [False] * len(pairs)
            scored = [(value, flag) for (value, _), flag in zip(scored, greedy)]
        results = [(float(value), bool(flag)) for value, flag in scored]
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """log p of each whole document, window by window (a lower bound for diffusion models)."""
        documents = [self.scorer.windows(self.pipe.tokenizer.encode(request.args[0])) for request in requests]
        scored = self.scorer.score([pair for windows in documents for pair in windows], self.batch_size,
                                   progress=not disable_tqdm)
        results, first = [], 0
        for request, windows in zip(requests, documents):
            results.append(float(sum(value for value, _ in scored[first : first + len(windows)])))
            first += len(windows)
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, results[-1])
        return results

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """A sample after each context, ``max_gen_toks`` tokens long, cut at end-of-text and at the ``until`` strings.

        Requests with the same ``gen_kwargs`` (and, for the autoregressive sampler, the same prompt
        length) are sampled together, ``batch_size`` at a time; sample i of a group depends on the seed and i.
        """
        results = [""] * len(requests)
        groups: dict[str, list[int]] = {}
        prompts, settings = [], []
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            options, stops, length = self.generation_settings(dict(gen_kwargs or {}))
            prompt = self.pipe.tokenizer.encode(context) if context else []
            length = min(length, self.pipe.context_length - (1 if prompt else 0))
            prompt = prompt[len(prompt) - min(len(prompt), self.pipe.context_length - length) :]
            prompts.append(prompt)
            settings.append((options, stops, length))
            key = json.dumps([dataclasses.asdict(options), length, len(prompt) if self.writes_left_to_right else 0])
            groups.setdefault(key, []).append(index)
        for indices in tqdm(groups.values(), desc="generate_until", disable=disable_tqdm, leave=False):
            options, _, length = settings[indices[0]]
            rows = [[*prompts[i], *[None] * length] for i in indices]
            for last in last_steps(self.pipe.run_batches(options, rows, self.batch_size)):
                for row in range(last.tokens.shape[0]):
                    index = indices[last.first_sample + row]
                    ids = generated_ids(last, row)
                    if self.pipe.tokenizer.eos_id in ids:
                        ids = ids[: ids.index(self.pipe.tokenizer.eos_id)]
                    results[index] = cut_at_stops(self.pipe.tokenizer.decode(ids), settings[index][1])
                    self.cache_hook.add_partial("generate_until", requests[index].args, results[index])
        return results

    @property
    def writes_left_to_right(self) -> bool:
        """Whether the sampler is the autoregressive one, which needs prompts of one length per batch."""
        return self.pipe.process.name == "ar"

    def generation_settings(self, gen_kwargs: dict[str, Any]) -> tuple[SamplerOptions, list[str], int]:
        """Sampler options, stop strings and length of one request's ``gen_kwargs``.

        ``until`` (a string or a list), ``max_gen_toks``, ``do_sample`` (False: temperature 0) and
        any :class:`SamplerOptions` field, over the options of ``model_args``.
        """
        stops = gen_kwargs.pop("until", None) or []
        stops = [stops] if isinstance(stops, str) else list(stops)
        length = gen_kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS)
        check_integer("max_gen_toks", length, minimum=1)
        if gen_kwargs.pop("do_sample", True) is False:
            gen_kwargs["temperature"] = 0.0
        options = SamplerOptions.build(self.options, **gen_kwargs)
        get_family(self.pipe.process.name).check(options)
        return options, stops, length


def harness_arguments(arguments: Sequence[str]) -> list[str]:
    """lm-eval's command line for ``ddlm lm-eval ARGUMENTS``: ``--model ddlm`` implied for a run, and the
    tasks ddlm ships (``--include_path``) unless another directory is given."""
    arguments = list(arguments)
    for index, item in enumerate(arguments):
        name, _, value = item.partition("=")
        if name in ("--model", "-M"):
            value = value or (arguments[index + 1] if index + 1 < len(arguments) else "")
            if value != "ddlm":
                raise DDLMError(f"ddlm lm-eval evaluates ddlm models; drop --model {value} (run lm-eval itself for "
                                "other kinds) and name the model with --model_args pretrained=NAME_OR_DIR")
    if arguments[:1] not in (["ls"], ["validate"]) and not any(a.partition("=")[0] in ("--model", "-M") for a in arguments):
        arguments += ["--model", "ddlm"]
    if not any(item.partition("=")[0] == "--include_path" for item in arguments):
        arguments += ["--include_path", str(TASKS_DIR)]
    return arguments


def run_harness_cli(arguments: Sequence[str]) -> int:
    """``ddlm lm-eval ARGUMENTS``: the harness's own command line with the ddlm model registered."""
    from lm_eval.__main__ import cli_evaluate

    if {"-h", "--help"} & set(arguments):
        print("ddlm lm-eval ARGS runs lm-evaluation-harness's command line (its help follows) with the ddlm model "
              "registered and --model ddlm implied: --model_args pretrained=NAME_OR_DIR[,OPTION=VALUE,...]\n")
    saved = sys.argv
    sys.argv = ["lm-eval", *harness_arguments(arguments)]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0
