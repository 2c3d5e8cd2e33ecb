"""ddlm models in lm-evaluation-harness (MATH.md: conditional log-likelihood for benchmarks), offline.

Tiny random models saved with ``save_pretrained`` run local tasks (YAML + JSON lines written here)
through the real harness; the log-likelihoods are checked against the exact NLL (autoregressive) and
against brute force over every mask (masked and block diffusion).
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import lm_eval
import lm_eval.evaluator
import pytest
import torch
from lm_eval.tasks import TaskManager

from ddlm import DiffusionPipeline
from ddlm.cli import main
from ddlm.errors import DDLMError
from ddlm.eval import harness
from ddlm.eval.harness import (TASKS_DIR, DDLMHarnessModel, Scorer, context_seed, cut_at_stops, draw_masks,
                               harness_arguments, order_masks)
from ddlm.model import ModelConfig, Transformer
from ddlm.families import build_process
from ddlm.processes import Autoregressive, BlockDiffusion, MaskedDiffusion, Vocabulary, build_schedule
from ddlm.processes.block import block_causal_attention
from ddlm.tokenizers import CharTokenizer

CHARS = "abc \n"
CONTEXT = 24
BLOCK = 4
DOCS = [
    {"context": "ab ca\nbc", "choices": [" ab", "c", " cab"], "label": 0, "text": "ab ca\nbc ab\ncc", "answer": "a"},
    {"context": "", "choices": ["ba", "a"], "label": 1, "text": "c" * 40, "answer": "b"},  # past one context
    {"context": "c\n" * 15, "choices": ["abcab", "b"], "label": 0, "text": "a b c", "answer": "c"},  # cut on the left
]


def tiny_pipe(kind: str, time_conditioning: bool = False, shift: bool = False) -> DiffusionPipeline:
    """A random model over CHARS with peaked predictions (so that masks change the scores), which, with
    ``time_conditioning``, depends on the noise level; ``shift``: position i reads token i - 1."""
    tokenizer = CharTokenizer(list(CHARS))
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=CONTEXT, d_model=16, n_layers=1, n_heads=2,
                         causal=kind == "ar", time_conditioning=time_conditioning, shift=shift,
                         start_id=tokenizer.eos_id if shift else None)
    model = Transformer(config)
    with torch.no_grad():
        model.embed.weight.mul_(20)
        for name, parameter in model.named_parameters():
            if "modulation" in name:  # adaLN-Zero starts with no effect: make the noise level (and attention) count
                parameter.normal_(0, 0.3)
    ids = dict(mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    process = {"ar": lambda: Autoregressive(**ids),
               "masked": lambda: MaskedDiffusion(build_schedule("linear"), **ids),
               "block": lambda: BlockDiffusion(build_schedule("linear"), block_size=BLOCK, **ids)}[kind]()
    return DiffusionPipeline(model, tokenizer, process, precision="fp32")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for kind in ("ar", "masked", "block"):
        dirs[kind] = root / kind
        tiny_pipe(kind, time_conditioning=kind == "masked").save_pretrained(dirs[kind])
    return dirs


MULTIPLE_CHOICE = ("output_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\n"
                   "doc_to_target: '{{label}}'\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n")


def write_tasks(root: Path, docs: list[dict], tasks: dict[str, str]) -> Path:
    """Local harness tasks in ``root``: ``docs`` as JSON lines, and each task's YAML (its name, the data, its body)."""
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    for name, body in tasks.items():
        (root / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                           f"    test: {data}\n  cache_dir: {root / 'cache'}\ntest_split: test\n{body}")
    return root


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """Three local tasks over DOCS: multiple choice, rolling log-likelihood and generation with a stop string."""
    return write_tasks(tmp_path_factory.mktemp("tasks"), DOCS, {
        "tiny_mc": MULTIPLE_CHOICE,
        "tiny_rolling": "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
                        "metric_list:\n  - metric: bits_per_byte\n",
        "tiny_gen": "output_type: generate_until\ndoc_to_text: '{{context}}'\ndoc_to_target: '{{answer}}'\n"
                    "generation_kwargs:\n  until: ['b']\n  max_gen_toks: 8\n  steps: 4\nmetric_list:\n  - metric: exact_match\n"})


@pytest.fixture(scope="module")
def harness_runs(model_dirs, task_dir) -> dict[str, tuple[DDLMHarnessModel, dict]]:
    """Each tiny model and its results of the three local tasks through ``lm_eval.simple_evaluate``, with
    every request's response (the harness's report of the machine, which runs torch's collect_env, skipped)."""
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)
        for kind, directory in model_dirs.items():
            model = DDLMHarnessModel(str(directory), mc_draws=4, batch_size=2, precision="fp32")
            runs[kind] = model, lm_eval.simple_evaluate(
                model=model, tasks=["tiny_mc", "tiny_rolling", "tiny_gen"], log_samples=True,
                task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))
    return runs


class Request:
    """What the harness hands a model: ``args``."""

    def __init__(self, *args):
        self.args = args


def exact_log_likelihood(pipe: DiffusionPipeline, text: str) -> float:
    """log p(text) of an autoregressive model: minus its process's loss (the exact NLL), from end-of-text."""
    if not text:
        return 0.0
    with torch.no_grad():
        return -pipe.process.loss(pipe.model, torch.tensor([pipe.tokenizer.encode(text)])).nelbo_sum


def read_then_scored(pipe: DiffusionPipeline, text: str, scored: int) -> float:
    """log p of the last ``scored`` tokens of ``text`` given the ones before, read without end-of-text
    (the window of a text longer than the context)."""
    ids = pipe.tokenizer.encode(text)
    with torch.no_grad():
        log_probs = pipe.process.log_probs(pipe.model(torch.tensor([ids[:-1]])))[0]
    return sum(float(log_probs[i - 1, ids[i]]) for i in range(len(ids) - scored, len(ids)))


# ----- through the harness -----

@pytest.mark.parametrize("kind", ["ar", "masked", "block"])
def test_local_tasks_run_through_the_harness(kind, harness_runs):
    _, results = harness_runs[kind]
    assert set(results["results"]) == {"tiny_mc", "tiny_rolling", "tiny_gen"}
    assert 0 <= results["results"]["tiny_mc"]["acc,none"] <= 1
    generations = [sample["resps"][0][0] for sample in results["samples"]["tiny_gen"]]
    assert len(generations) == len(DOCS) and all("b" not in text and len(text) <= 8 for text in generations)
    rolling = [sample["resps"][0][0] for sample in results["samples"]["tiny_rolling"]]
    assert all(math.isfinite(value) and value < 0 for value in rolling)


def test_autoregressive_log_likelihoods_through_the_harness_are_the_exact_nll(harness_runs):
    """Continuation: log p(context + continuation) - log p(context) by the AR process's loss (the exact NLL);
    past the context, the continuation after the last CONTEXT + 1 - |c| tokens. Document: log p(text); the
    40-token one is a window of 24 tokens, then 16 after the 9 before them."""
    model, results = harness_runs["ar"]
    pipe = model.pipe
    for sample in results["samples"]["tiny_mc"]:
        for (context, continuation), ((value, _),) in zip(sample["arguments"], sample["resps"]):
            text = context + continuation
            if len(text) <= CONTEXT:
                expected = exact_log_likelihood(pipe, text) - exact_log_likelihood(pipe, context)
            else:
                expected = read_then_scored(pipe, text[-CONTEXT - 1 :], len(continuation))
            assert value == pytest.approx(expected, rel=1e-5, abs=1e-5)
    for sample in results["samples"]["tiny_rolling"]:
        text, value = sample["doc"]["text"], sample["resps"][0][0]
        expected = exact_log_likelihood(pipe, text[:CONTEXT])
        if len(text) > CONTEXT:
            expected += read_then_scored(pipe, text[CONTEXT - 9 :], len(text) - CONTEXT)
        assert value == pytest.approx(expected, rel=1e-5)


def test_autoregressive_is_greedy_is_the_argmax_continuation():
    pipe = tiny_pipe("ar")
    scorer = Scorer(pipe)
    context = pipe.tokenizer.encode("ab c")
    greedy = []
    for _ in range(3):  # the argmax continuation, token by token
        inputs = torch.tensor([[pipe.tokenizer.eos_id, *context, *greedy]])
        with torch.no_grad():
            greedy.append(int(pipe.process.log_probs(pipe.model(inputs))[0, -1].argmax()))
    other = [(greedy[0] + 1) % len(CHARS), *greedy[1:]]
    (_, is_greedy), (_, is_other) = scorer.score([(context, greedy), (context, other)], batch_size=2)
    assert is_greedy and not is_other


# ----- the Monte Carlo estimator against brute force -----

def masked_value(pipe: DiffusionPipeline, context: list[int], continuation: list[int], subset: tuple[int, ...],
                 future: int = 0) -> float:
    """(|c| / l) sum over the masked continuation positions of log p, one row, computed directly; ``future``
    MASK positions after the continuation, counted in the masked fraction the model is given."""
    tokens = torch.tensor([[*context, *continuation, *[pipe.process.mask_id] * future]])
    positions = [len(context) + i for i in subset]
    xt = tokens.clone()
    xt[0, positions] = pipe.process.mask_id
    noise = (len(subset) + future) / (len(continuation) + future)
    with torch.no_grad():
        log_probs = pipe.process.log_probs(pipe.model(xt, torch.tensor([noise])))[0]
    return len(continuation) / len(subset) * sum(float(log_probs[p, tokens[0, p]]) for p in positions)


def block_value(pipe: DiffusionPipeline, tokens: list[int], block: list[int], subset: tuple[int, ...]) -> float:
    """(n_b / l) sum of log p over the masked positions of one block, its earlier blocks clean: the sampler's view
    (block-causal attention over the text up to the block's end), not the harness's one-pass layout."""
    end = max(block) + 1
    xt = torch.tensor([tokens[:end]])
    masked = [block[i] for i in subset]
    xt[0, masked] = pipe.process.mask_id
    positions = torch.arange(end)
    inputs = {"inputs": pipe.model.shifted_inputs(xt)} if pipe.model.shifted else {}  # earlier blocks are clean
    with torch.no_grad():
        logits = pipe.model(xt, attention=block_causal_attention(positions, positions, BLOCK), positions=positions,
                            **inputs)
    log_probs = pipe.process.log_probs(logits)[0]
    return len(block) / len(subset) * sum(float(log_probs[p, tokens[p]]) for p in masked)


def subsets(n: int) -> list[tuple[int, ...]]:
    return [subset for size in range(1, n + 1) for subset in itertools.combinations(range(n), size)]


def exact_expectation(values: dict[tuple[int, ...], float], n: int) -> float:
    """E over l ~ U{1..n} and a uniform l-subset of the per-subset values."""
    return sum(value / math.comb(n, len(subset)) for subset, value in values.items()) / n


@pytest.mark.parametrize("future", [False, True], ids=["canvas-ends", "masked-future"])
def test_masked_estimate_is_the_mean_of_its_draws_computed_one_by_one(future):
    """Every draw's masks (l of |c| at random) scored in the batch as a direct one-row call scores them; padding
    and the other pairs of a batch change nothing. With ``masked_future`` the canvas runs on, masked, to the
    model's context."""
    pipe = tiny_pipe("masked", time_conditioning=True)
    scorer = Scorer(pipe, draws=6, seed=3, masked_future=future)
    context, continuation = pipe.tokenizer.encode("ab c\na"), pipe.tokenizer.encode("cba")
    masked, weight = draw_masks(torch.zeros(3, dtype=torch.long), 6,
                                torch.Generator().manual_seed(context_seed(3, context)))
    assert sorted(masked.sum(dim=1).tolist()) == [1, 1, 2, 2, 3, 3]  # l stratified: each value equally often
    assert torch.equal(weight[masked], (3 / masked.sum(dim=1, keepdim=True).double().expand(-1, 3))[masked])
    rest = CONTEXT - len(context) - len(continuation) if future else 0
    expected = sum(masked_value(pipe, context, continuation, tuple(row.nonzero().flatten().tolist()), rest)
                   for row in masked) / 6
    alone = scorer.score([(context, continuation)], batch_size=1)[0][0]
    padded = scorer.score([(context, continuation), (context * 3, continuation)], batch_size=2)[0][0]
    assert alone == pytest.approx(expected, rel=1e-5)
    assert padded == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("n", [2, 4])
def test_masked_estimate_converges_to_the_brute_force_expectation(n):
    pipe = tiny_pipe("masked", time_conditioning=True)
    context, continuation = pipe.tokenizer.encode("c ab"), pipe.tokenizer.encode("abc a"[:n])
    values = {subset: masked_value(pipe, context, continuation, subset) for subset in subsets(n)}
    exact = exact_expectation(values, n)
    spread = math.sqrt(sum((v - exact) ** 2 / math.comb(n, len(s)) for s, v in values.items()) / n)
    errors = []
    for draws in (n, 16 * n, 512 * n):
        estimate = Scorer(pipe, draws=draws).score([(context, continuation)], batch_size=1)[0][0]
        errors.append(abs(estimate - exact))
        assert errors[-1] <= 4 * spread / math.sqrt(draws) + 1e-5
    assert errors[-1] < 0.1 * spread


@pytest.mark.parametrize("shift", [False, True], ids=["plain", "shifted"])
def test_block_estimate_converges_to_the_block_wise_brute_force_bound(shift):
    """A continuation over parts of two blocks: the sum over blocks of each block's expectation."""
    pipe = tiny_pipe("block", shift=shift)
    context, continuation = pipe.tokenizer.encode("ab c\n"), pipe.tokenizer.encode("cbaab")  # at positions 5-9
    tokens = [*context, *continuation]
    blocks = [[5, 6, 7], [8, 9]]  # in blocks 4-7 and 8-11
    exact = sum(exact_expectation({s: block_value(pipe, tokens, block, s) for s in subsets(len(block))}, len(block))
                for block in blocks)
    estimates = [Scorer(pipe, draws=draws).score([(context, continuation)], batch_size=1)[0][0] for draws in (6, 3000)]
    assert estimates[1] == pytest.approx(exact, abs=0.02 * abs(exact))
    assert abs(estimates[1] - exact) < abs(estimates[0] - exact) or abs(estimates[0] - exact) < 1e-4


def test_draw_masks_per_block_masks_l_of_each_group():
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    masked, weight = draw_masks(groups, 12, torch.Generator().manual_seed(0))
    sizes = torch.tensor([3, 2, 1])
    for group in range(3):
        counts = masked[:, groups == group].sum(dim=1)
        assert sorted(counts.tolist()) == sorted([1 + i * int(sizes[group]) // 12 for i in range(12)])
        picked = weight[:, groups == group][masked[:, groups == group]]
        assert torch.allclose(picked, sizes[group] / counts.repeat_interleave(counts).double())


# ----- the fixed-order and random-order estimators against brute force -----

def order_value(pipe: DiffusionPipeline, context: list[int], continuation: list[int], order: tuple[int, ...],
                future: int = 0) -> float:
    """log p of the continuation unmasked one token per step along ``order``, one direct model call per step:
    step k hides order[k:] (and ``future`` MASK positions after the continuation), gives the model the masked
    fraction after the context and scores the token at order[k]."""
    n, total = len(continuation), 0.0
    for k, position in enumerate(order):
        xt = torch.tensor([[*context, *continuation, *[pipe.process.mask_id] * future]])
        xt[0, [len(context) + i for i in order[k:]]] = pipe.process.mask_id
        with torch.no_grad():
            log_probs = pipe.process.log_probs(pipe.model(xt, torch.tensor([(n - k + future) / (n + future)])))[0]
        total += float(log_probs[len(context) + position, continuation[position]])
    return total


@pytest.mark.parametrize("time_conditioning", [False, True], ids=["plain", "noise-conditioned"])
def test_left_to_right_is_the_one_token_per_step_log_likelihood_and_deterministic(time_conditioning):
    pipe = tiny_pipe("masked", time_conditioning=time_conditioning)
    context, continuation = pipe.tokenizer.encode("ab c\na"), pipe.tokenizer.encode("cba b")
    expected = order_value(pipe, context, continuation, tuple(range(len(continuation))))
    scores = [Scorer(pipe, draws=draws, seed=seed, estimator="left_to_right").score(
        [(context * 2, continuation[:2]), (context, continuation)], batch_size=2)[1][0]
        for draws, seed in ((1, 0), (7, 5))]  # padded beside a longer context; the draws and the seed change nothing
    assert scores[0] == scores[1] and scores[0] == pytest.approx(expected, rel=1e-5)
    assert Scorer(pipe, estimator="left_to_right").score([([], continuation)], batch_size=1)[0][0] == pytest.approx(
        order_value(pipe, [], continuation, tuple(range(len(continuation)))), rel=1e-5)


@pytest.mark.parametrize("time_conditioning", [False, True], ids=["plain", "noise-conditioned"])
def test_left_to_right_with_a_masked_future_is_the_step_by_step_log_likelihood_of_the_full_canvas(time_conditioning):
    """``masked_future``: MASK positions after the continuation up to the model's context, hidden at every step and
    never scored; a pair that fills the context gets none (its canvas cut on the left as without the option)."""
    pipe = tiny_pipe("masked", time_conditioning=time_conditioning)
    scorer = Scorer(pipe, estimator="left_to_right", masked_future=True)
    context, continuation = pipe.tokenizer.encode("ab c\na"), pipe.tokenizer.encode("cba b")
    order = tuple(range(len(continuation)))
    long_context = context * 5  # 30 tokens: the canvas keeps the last CONTEXT - 5 of them and has no future
    alone, padded = (scorer.score([(context, continuation)], batch_size=1)[0][0],
                     scorer.score([(context[:2], continuation[:2]), (context, continuation)], batch_size=2)[1][0])
    expected = order_value(pipe, context, continuation, order, CONTEXT - len(context) - len(continuation))
    assert alone == pytest.approx(expected, rel=1e-5) and padded == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(order_value(pipe, context, continuation, order), rel=1e-3)  # the future counts
    assert scorer.score([(long_context, continuation)], batch_size=1)[0][0] == pytest.approx(
        order_value(pipe, long_context[-(CONTEXT - len(continuation)) :], continuation, order), rel=1e-5)



@pytest.mark.parametrize("kind, estimator", [("ar", "exact"), ("masked", "monte_carlo"), ("masked", "left_to_right"),
                                             ("masked", "random_order"), ("block", "monte_carlo"), ("block", "left_to_right")])
def test_rows_split_over_several_model_calls_score_as_one_call(kind, estimator, monkeypatch):
    """A large vocabulary's rows go to the model a few at a time (LOGITS_PER_CALL); here one row per call."""
    pipe = tiny_pipe(kind, time_conditioning=kind == "masked")
    pairs = [(pipe.tokenizer.encode("ab c\n"), pipe.tokenizer.encode("cbaab")), ([], pipe.tokenizer.encode("ab c")),
             (pipe.tokenizer.encode("c" * 30), pipe.tokenizer.encode("a"))]
    scorer = Scorer(pipe, draws=5, estimator="monte_carlo" if kind == "ar" else estimator)
    whole = scorer.score(pairs, batch_size=3)
    monkeypatch.setattr(harness, "LOGITS_PER_CALL", 1)
    split = scorer.score(pairs, batch_size=3)
    assert [greedy for _, greedy in split] == [greedy for _, greedy in whole]
    assert [value for value, _ in split] == pytest.approx([value for value, _ in whole], rel=1e-6)

def test_the_harness_model_takes_the_estimator_from_model_args(model_dirs):
    model = DDLMHarnessModel.create_from_arg_string(f"pretrained={model_dirs['masked']},estimator=left_to_right,"
                                                    "greedy_check=false,precision=fp32")
    tokenizer = model.pipe.tokenizer
    value, greedy = model.loglikelihood([Request("ab c\n", "cab")], disable_tqdm=True)[0]
    expected = order_value(model.pipe, tokenizer.encode("ab c\n"), tokenizer.encode("cab"), (0, 1, 2))
    assert value == pytest.approx(expected, rel=1e-5) and greedy is False
    future = DDLMHarnessModel.create_from_arg_string(f"pretrained={model_dirs['masked']},estimator=left_to_right,"
                                                     "masked_future=true,greedy_check=false,precision=fp32")
    value = future.loglikelihood([Request("ab c\n", "cab")], disable_tqdm=True)[0][0]
    assert value == pytest.approx(order_value(future.pipe, tokenizer.encode("ab c\n"), tokenizer.encode("cab"),
                                              (0, 1, 2), CONTEXT - 8), rel=1e-5)


def test_order_masks_hide_the_positions_not_yet_unmasked():
    order = (2, 0, 3, 1)
    masked, weight = order_masks(torch.tensor([order]))
    for k in range(4):
        assert masked[k].nonzero().flatten().tolist() == sorted(order[k:])
        assert weight[k].nonzero().flatten().tolist() == [order[k]] and weight[k, order[k]] == 1


def test_random_orders_converge_to_the_monte_carlo_bound():
    """Averaged over every order, the order log-likelihood is the LLaDA expectation over every mask (the token
    unmasked with l hidden is uniform among them); the random-order estimate converges to it."""
    pipe = tiny_pipe("masked", time_conditioning=True)
    context, continuation = pipe.tokenizer.encode("c ab"), pipe.tokenizer.encode("abca")
    n = len(continuation)
    by_order = [order_value(pipe, context, continuation, order) for order in itertools.permutations(range(n))]
    exact = exact_expectation({s: masked_value(pipe, context, continuation, s) for s in subsets(n)}, n)
    assert sum(by_order) / len(by_order) == pytest.approx(exact, rel=1e-5)
    spread = float(torch.tensor(by_order).std(correction=0))
    for draws in (4, 400):
        estimate = Scorer(pipe, draws=draws, estimator="random_order").score([(context, continuation)], 1)[0][0]
        assert abs(estimate - exact) <= 4 * spread / math.sqrt(draws) + 1e-5


@pytest.mark.parametrize("kind", ["ar", "block"])
def test_the_estimator_and_the_masked_future_change_nothing_for_autoregressive_and_block_models(kind):
    """(A block model takes the left-to-right estimator, tested below, and refuses random orders.)"""
    pipe = tiny_pipe(kind)
    pairs = [(pipe.tokenizer.encode("ab c\n"), pipe.tokenizer.encode("cbaab")), ([], pipe.tokenizer.encode("ab"))]
    reference = Scorer(pipe, draws=6).score(pairs, batch_size=2)
    estimators = ("monte_carlo", "left_to_right", "random_order") if kind == "ar" else ("monte_carlo",)
    for estimator, future in itertools.product(estimators, (False, True)):
        assert Scorer(pipe, draws=6, estimator=estimator, masked_future=future).score(pairs, batch_size=2) == reference
    if kind == "block":
        with pytest.raises(DDLMError, match="random_order estimator is for masked models"):
            Scorer(pipe, estimator="random_order")


def block_left_to_right_value(pipe: DiffusionPipeline, context: list[int], continuation: list[int]) -> float:
    """log p of the continuation written one token per step from each block's left, one scorer row per position:
    the position's block holds MASK from it on, every other position is clean."""
    scorer, start, total = Scorer(pipe), len(context), 0.0
    x0 = torch.tensor([[*context, *continuation]])
    for position in range(start, start + len(continuation)):
        block_end = (position // BLOCK + 1) * BLOCK
        masked = torch.zeros_like(x0, dtype=torch.bool)
        masked[0, position:block_end] = True
        with torch.no_grad():
            log_probs = pipe.process.log_probs(scorer.diffusion_logits(x0, masked, torch.ones(1)))[0]
        total += float(log_probs[position, x0[0, position]])
    return total


@pytest.mark.parametrize("shift", [False, True], ids=["plain", "shifted"])
def test_left_to_right_for_a_block_model_is_the_log_likelihood_of_a_sampler_and_sums_to_one(shift):
    pipe = tiny_pipe("block", shift=shift)
    scorer = Scorer(pipe, estimator="left_to_right")
    context = pipe.tokenizer.encode("ab ")  # the continuation ends block 0 and fills most of block 1
    tokens = [token for token in range(pipe.tokenizer.vocab_size) if token not in (pipe.process.mask_id, pipe.process.pad_id)]
    continuations = [list(tokens) for tokens in itertools.product(tokens, repeat=4)]
    scores = [value for value, _ in scorer.score([(context, continuation) for continuation in continuations], 256)]
    assert math.fsum(math.exp(value) for value in scores) == pytest.approx(1.0, abs=1e-6)  # a distribution
    for index in (0, 17, len(continuations) - 1):
        assert scores[index] == pytest.approx(block_left_to_right_value(pipe, context, continuations[index]), rel=1e-5)
    bound = Scorer(pipe, draws=8, estimator="monte_carlo").score([(context, continuations[17])], 1)[0][0]
    assert bound != pytest.approx(scores[17], rel=1e-3)  # a different estimate, not the same rows


# ----- generation, arguments and errors -----

def test_stop_sequences_cut_the_sample_the_sampler_writes():
    model = DDLMHarnessModel(tiny_pipe("masked"), steps=6)
    free = model.generate_until([Request("ab", {"max_gen_toks": 12})])[0]
    stop = next(char for char in free if char.strip())  # a character the sample holds
    cut = model.generate_until([Request("ab", {"max_gen_toks": 12, "until": [stop, "zz"]})])[0]
    assert cut == free[: free.index(stop)]
    assert cut_at_stops("abcabc", ["c", "b"]) == "a" and cut_at_stops("abc", []) == "abc"


def test_the_model_arguments_are_checked_in_one_line():
    pipe = tiny_pipe("ar")
    with pytest.raises(DDLMError, match="no argument colour"):
        DDLMHarnessModel(pipe, colour=3)
    with pytest.raises(DDLMError, match="batch_size must be a whole number"):
        DDLMHarnessModel(pipe, batch_size="auto")
    with pytest.raises(DDLMError, match="steps must be at least 1"):
        DDLMHarnessModel(pipe, steps=0)
    with pytest.raises(DDLMError, match="estimator must be one of monte_carlo, left_to_right, random_order"):
        DDLMHarnessModel(pipe, estimator="exact")
    with pytest.raises(DDLMError, match="masked_future must be true or false, got 'maybe'"):
        DDLMHarnessModel.create_from_arg_string("masked_future=maybe")
    assert DDLMHarnessModel(pipe, masked_future="True").masked_future is True
    model = DDLMHarnessModel.create_from_arg_string("batch_size=3,steps=5", {"batch_size": 1, "device": None})
    assert model.batch_size == 3 and model.options.steps == 5  # model_args win over the harness's --batch_size
    sedd = DiffusionPipeline(pipe.model, pipe.tokenizer, build_process({"name": "sedd-absorb"}, Vocabulary.of(pipe.tokenizer)))
    with pytest.raises(DDLMError, match="log-likelihoods need an autoregressive, masked or block model"):
        DDLMHarnessModel(sedd).loglikelihood([Request("a", "b")])


def test_a_hugging_face_llada_model_scores_as_its_native_twin(tmp_path):
    """The LLaDA-interface model through transformers and the same network as a ddlm Transformer: same figures."""
    from tests.test_hf_backend import llada_model

    directory, native = llada_model(tmp_path / "llada")
    hf = DDLMHarnessModel(str(directory), trust_remote_code=True, mc_draws=8, batch_size=2, device="cpu", precision="fp32")
    twin = DDLMHarnessModel(DiffusionPipeline(native, hf.pipe.tokenizer, hf.pipe.process, precision="fp32"),
                            mc_draws=8, batch_size=2)
    requests = [Request("the cat sat on", " a mat"), Request("", "dog ran far"), Request("it was", " night")]
    for (hf_value, hf_greedy), (value, greedy) in zip(hf.loglikelihood(requests), twin.loglikelihood(requests)):
        assert hf_value == pytest.approx(value, rel=1e-5) and hf_greedy == greedy
    assert hf.loglikelihood_rolling([Request("the cat sat on a mat")]) == pytest.approx(
        twin.loglikelihood_rolling([Request("the cat sat on a mat")]), rel=1e-5)


def test_a_hugging_face_llada_model_runs_through_ddlm_lm_eval(tmp_path, monkeypatch, capsys):
    """The tiny LLaDA-interface model by name through the harness's command line: multiple choice and generation."""
    from tests.test_hf_backend import WORDS, llada_model

    directory, _ = llada_model(tmp_path / "llada")
    docs = [{"context": "the cat sat on", "choices": [" a mat", " the moon"], "label": 0},
            {"context": "it was a good", "choices": [" day", " house tree"], "label": 0}]
    write_tasks(tmp_path, docs, {
        "words_mc": MULTIPLE_CHOICE,
        "words_gen": "output_type: generate_until\ndoc_to_text: '{{context}}'\ndoc_to_target: ' day'\n"
                     "generation_kwargs:\n  until: [' ']\n  max_gen_toks: 4\n  steps: 4\nmetric_list:\n  - metric: exact_match\n"})
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)  # torch's collect_env: slow
    output = tmp_path / "results"
    assert main(["lm-eval", "--model_args", f"pretrained={directory},trust_remote_code=true,mc_draws=4,precision=fp32",
                 "--tasks", "words_mc,words_gen", "--include_path", str(tmp_path), "--batch_size", "2",
                 "--output_path", str(output), "--log_samples"]) == 0
    table = capsys.readouterr().out
    assert "words_mc" in table and "words_gen" in table and "acc" in table
    samples = [json.loads(line) for path in output.rglob("samples_words_gen_*.jsonl") for line in path.read_text().splitlines()]
    generations = [sample["resps"][0][0] for sample in samples]
    assert len(generations) == len(docs) and all(text in WORDS for text in generations)  # cut at the first space


def test_ddlm_lm_eval_implies_the_model_and_the_bundled_tasks():
    assert harness_arguments(["--tasks", "x"]) == ["--tasks", "x", "--model", "ddlm", "--include_path", str(TASKS_DIR)]
    assert harness_arguments(["--model=ddlm", "--include_path", "d"]) == ["--model=ddlm", "--include_path", "d"]
    assert harness_arguments(["ls", "tasks"]) == ["ls", "tasks", "--include_path", str(TASKS_DIR)]
    with pytest.raises(DDLMError, match="drop --model hf"):
        harness_arguments(["--model", "hf", "--tasks", "x"])
    assert (TASKS_DIR / "shakespeare_next_line" / "shakespeare_next_line.yaml").is_file()


def test_ddlm_lm_eval_runs_the_harness_command_line(model_dirs, task_dir, monkeypatch, capsys):
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)  # torch's collect_env: slow
    assert main(["lm-eval", "--model_args", f"pretrained={model_dirs['ar']}", "--tasks", "tiny_mc",
                 "--include_path", str(task_dir), "--batch_size", "2"]) == 0
    table = capsys.readouterr().out
    assert "tiny_mc" in table and "acc" in table and "batch_size: 2" in table


def bundled_task_module():
    """The bundled task's question builder, ``next_line``."""
    sys.path.insert(0, str(TASKS_DIR / "shakespeare_next_line"))
    try:
        import next_line
    finally:
        sys.path.pop(0)
    return next_line


def test_the_bundled_task_asks_for_the_true_next_line_of_the_held_out_text():
    from ddlm.bundled import bundled_model_path
    from ddlm.data import builtin_text
    from ddlm.tokenizers import load_tokenizer

    next_line = bundled_task_module()
    questions = next_line.questions()
    assert questions == next_line.questions() and len(questions) == next_line.QUESTIONS
    text = builtin_text("shakespeare")
    held_out = text[round(len(text) * 0.9) :]
    vocabulary = set(load_tokenizer(bundled_model_path("shakespeare")).chars)
    for question in questions:
        choices, true = question["choices"], question["choices"][question["label"]]
        assert len(set(choices)) == 4 and (question["context"] + true + "\n") in held_out
        assert all(abs(len(choice) - len(true)) <= 0.2 * len(true) for choice in choices)
        assert set(question["context"] + "".join(choices)) <= vocabulary
    assert 0.2 < sum(question["label"] == 0 for question in questions) / len(questions) < 0.3


def test_the_dev_questions_share_no_line_with_the_reported_test_questions():
    """Built as the test questions from other lines of the held-out text: no non-blank line of a dev question's
    context or choices is one of the first REPORTED test questions' lines; the dev task runs through the harness."""
    next_line = bundled_task_module()
    dev, test = next_line.dev_questions(), next_line.questions()[: next_line.REPORTED]
    assert len(dev) == next_line.DEV_QUESTIONS and dev == next_line.dev_questions()
    test_lines = {line for question in test for line in question["context"].split("\n") + question["choices"] if line}
    held_out = "\n".join(next_line.held_out_lines())
    for question in dev:
        choices, true = question["choices"], question["choices"][question["label"]]
        shown = [line for line in question["context"].split("\n") + choices if line]
        assert not test_lines & set(shown)
        assert len(set(choices)) == 4 and (question["context"] + true + "\n") in held_out
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    assert "shakespeare_next_line_dev" in manager.all_tasks


def test_ddlm_lm_eval_refuses_another_model_in_one_line(capsys):
    assert main(["lm-eval", "--model", "hf", "--tasks", "tiny_mc"]) == 2
    assert "drop --model hf" in capsys.readouterr().err


def test_ddlm_lm_eval_help_says_what_it_adds_before_the_harness_help(capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["lm-eval", "--help"])
    out = capsys.readouterr().out
    assert exit_code.value.code == 0 and out.startswith("ddlm lm-eval ARGS runs lm-evaluation-harness's command line")
    assert "--model_args" in out.split("\n", 2)[2]  # the harness's own help follows
