"""Sample statistics and the judge likelihood, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ddlm import DiffusionPipeline
from ddlm.errors import DDLMError
from ddlm.eval import DDLMJudge, distinct_n, evaluate_likelihood, load_judge, repetition_rate, unigram_entropy
from ddlm.eval.report import EvalSettings, evaluate
from ddlm.model import ModelConfig, Transformer
from ddlm.processes import Autoregressive, MaskedDiffusion, build_schedule
from ddlm.tokenizers import BPETokenizer, CharTokenizer
from tests.helpers import IIDOracle
from tests.test_stream import pipeline as stream_pipeline


def test_unigram_entropy_by_hand():
    assert unigram_entropy("aaaa") == 0.0
    assert unigram_entropy("abab") == pytest.approx(math.log(2))
    assert unigram_entropy("aabc") == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert unigram_entropy("") == 0.0


def test_distinct_n_and_repetition_by_hand():
    samples = ["abab", "abc"]
    # bigrams: ab ba ab | ab bc -> distinct {ab, ba, bc} = 3 of 5
    assert distinct_n(samples, 2) == pytest.approx(3 / 5)
    assert distinct_n(samples, 1) == pytest.approx(3 / 7)
    assert repetition_rate("abcabcabc", n=3) == pytest.approx(4 / 7)  # abc bca cab then all repeat
    assert repetition_rate("abcdefg", n=3) == 0.0


def tiny_judge() -> DiffusionPipeline:
    tokenizer = CharTokenizer("abc")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, context_length=8, d_model=16, n_layers=1,
                                    n_heads=2, causal=True))
    process = Autoregressive(tokenizer.mask_id, tokenizer.eos_id, tokenizer.pad_id)
    return DiffusionPipeline(model, tokenizer, process)


def test_judge_nll_is_the_mean_next_token_nll_computed_by_hand():
    judge = tiny_judge()
    texts = ["abcab", "ca", "bbbbbbbbbbbb"]  # the last is cut to the context of 8
    total, count = 0.0, 0
    for text in texts:
        ids = judge.tokenizer.encode(text)[:8]
        inputs = torch.tensor([[judge.tokenizer.eos_id, *ids[:-1]]])
        with torch.no_grad():
            log_probs = judge.process.log_probs(judge.model(inputs))[0]
        total -= sum(float(log_probs[i, token]) for i, token in enumerate(ids))
        count += len(ids)
    assert DDLMJudge(judge, batch_size=2).mean_nll(texts) == pytest.approx(total / count, rel=1e-5)


def test_a_diffusion_model_cannot_judge():
    judge = tiny_judge()
    judge.process = MaskedDiffusion(build_schedule("linear"), judge.tokenizer.mask_id, judge.tokenizer.pad_id)
    with pytest.raises(DDLMError, match="autoregressive"):
        DDLMJudge(judge)


# ----- the NELBO estimator -----

PI = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])


def iid_rows(count: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.multinomial(PI, length, replacement=True, generator=generator) for _ in range(count)]


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_nelbo_of_the_exact_denoiser_matches_the_true_nll_within_its_error(schedule):
    rows = iid_rows(48, 32)
    true_nll = float(torch.cat([-PI.log()[row] for row in rows]).mean())
    process = MaskedDiffusion(build_schedule(schedule), mask_id=5, pad_id=7)
    result = evaluate_likelihood(IIDOracle(PI, context_length=32), process, rows, [1] * 8, draws=16)
    assert abs(result.nats_per_token - true_nll) < 4 * result.standard_error
    assert result.standard_error < 0.05 and not result.exact
    assert result.tokens == 48 * 32 and result.bytes == 48 * 32


def test_standard_error_shrinks_with_more_draws():
    """One sequence scored 40 times: the spread is Monte-Carlo noise only, which falls as 1/sqrt(draws)."""
    rows = iid_rows(1, 32, seed=1) * 40
    true_nll = float(-PI.log()[rows[0]].mean())
    process = MaskedDiffusion(build_schedule("linear"), mask_id=5, pad_id=7)
    results = [evaluate_likelihood(IIDOracle(PI, 32), process, rows, [1] * 8, draws=d) for d in (2, 32)]
    assert results[1].standard_error < results[0].standard_error / 2
    for result in results:
        assert abs(result.nats_per_token - true_nll) < 4 * result.standard_error


def test_bits_per_byte_counts_utf8_bytes_for_a_character_tokenizer():
    text = "héllo wörld—ok"  # é, ö: 2 bytes each; the dash: 3 bytes
    tokenizer = CharTokenizer.from_texts([text])
    ids = torch.tensor(tokenizer.encode(text))
    assert sum(tokenizer.byte_lengths()[i] for i in ids.tolist()) == len(text.encode("utf-8")) == 18
    process = MaskedDiffusion(build_schedule("linear"), tokenizer.mask_id, tokenizer.pad_id)
    pi = torch.full((len(tokenizer.chars),), 1 / len(tokenizer.chars))
    result = evaluate_likelihood(IIDOracle(pi, 16), process, [ids], tokenizer.byte_lengths(), draws=4)
    total_nats = result.nats_per_token * len(ids)
    assert result.bits_per_byte == pytest.approx(total_nats / math.log(2) / 18)


def test_bits_per_byte_counts_utf8_bytes_for_a_bpe_tokenizer():
    corpus = ["the cat sat on the mat, naïve café ☕ " * 20]
    tokenizer = BPETokenizer.train(corpus, vocab_size=300)
    lengths = tokenizer.byte_lengths()
    for text in ["the cat", "naïve café ☕", "unseen wörds ✓"]:
        assert sum(lengths[i] for i in tokenizer.encode(text)) == len(text.encode("utf-8"))
    assert lengths[tokenizer.eos_id] == lengths[tokenizer.mask_id] == lengths[tokenizer.pad_id] == 0


def test_autoregressive_likelihood_is_exact_and_scored_once():
    judge = tiny_judge()
    rows = [torch.tensor(judge.tokenizer.encode("abcabcab")), torch.tensor(judge.tokenizer.encode("cbacbaca"))]
    result = evaluate_likelihood(judge.model, judge.process, rows, judge.tokenizer.byte_lengths(), draws=16)
    assert result.exact and result.draws == 1
    by_hand = DDLMJudge(judge).mean_nll(["abcabcab", "cbacbaca"])
    assert result.nats_per_token == pytest.approx(by_hand, rel=1e-5)


# ----- a Hugging Face judge, created locally -----

def test_hugging_face_judge_nll_by_hand(tmp_path, gpt2_dir):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    bpe = Tokenizer(models.BPE.from_file(str(gpt2_dir / "vocab.json"), str(gpt2_dir / "merges.txt")))
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=len(tokenizer))
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    judge = load_judge(tmp_path)
    texts = ["Once upon a time", "there was a cat."]
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([[tokenizer.eos_token_id, *ids]])).logits[0]
        for position, token in enumerate(ids):
            total -= float(logits[position].float().log_softmax(-1)[token])
        count += len(ids)
    assert judge.mean_nll(texts) == pytest.approx(total / count, rel=1e-5)
    assert math.exp(judge.mean_nll(texts)) == pytest.approx(math.exp(total / count), rel=1e-4)


def test_a_missing_judge_is_a_clear_error(tmp_path):
    with pytest.raises(DDLMError, match="not found"):
        load_judge(tmp_path / "nothing")


@pytest.mark.parametrize("process", ["masked", "ar"])
def test_the_sampling_bar_has_a_total_and_reaches_it(process):
    pipe = stream_pipeline(process)
    bars: dict[str, tuple[int, str, list[float]]] = {}

    def progress(what: str, total: int, unit: str):
        ticks: list[float] = []
        bars[what] = (total, unit, ticks)
        return lambda amount=1: ticks.append(amount)

    settings = EvalSettings(metrics=("samples",), num_samples=3, sampler={"steps": 8, "seed": 0})
    evaluate(pipe, None, None, settings, progress)
    total, unit, ticks = bars["sampling"]
    assert (total, unit) == (3, "samples") and len(ticks) > 1 and all(tick > 0 for tick in ticks)
    assert sum(ticks) == pytest.approx(3)


# ----- the exact left-to-right likelihood (--metrics left-to-right) -----

LEFT_TO_RIGHT_TEXT = "ab c\nabca b\ncc ab\nbca\n" * 3 + "ab c"  # 70 characters: rows of 24 (tests.test_lm_eval)


def left_to_right_figures(pipe: DiffusionPipeline, tmp_path, text: str = LEFT_TO_RIGHT_TEXT) -> tuple[dict, list[list[int]]]:
    """``evaluate``'s likelihood and left-to-right figures on ``text`` and the rows it read, PAD removed."""
    from ddlm.eval.report import evaluation_rows

    path = tmp_path / "held_out.txt"
    path.write_text(text)
    settings = EvalSettings(metrics=("likelihood", "left-to-right"), max_sequences=0, draws=4)
    result = evaluate(pipe, path, None, settings)
    rows = [[int(token) for token in row if int(token) != pipe.tokenizer.pad_id]
            for row in evaluation_rows(pipe, path, max_sequences=0)]
    return result, rows


def test_left_to_right_of_an_autoregressive_model_is_its_exact_nll(tmp_path):
    from tests.test_lm_eval import tiny_pipe

    result, rows = left_to_right_figures(tiny_pipe("ar"), tmp_path)
    exact, left_to_right = result["likelihood"], result["left_to_right"]
    assert len(rows) >= 2
    assert left_to_right["nats_per_token"] == pytest.approx(exact["nats_per_token"], rel=1e-5)
    assert (left_to_right["tokens"], left_to_right["bytes"], left_to_right["exact"]) == (exact["tokens"], exact["bytes"], True)


@pytest.mark.parametrize("kind", ["masked", "masked-noise-conditioned", "block", "block-shifted"])
def test_left_to_right_is_the_one_token_per_step_nll_computed_token_by_token(tmp_path, kind):
    """Each token scored by its own model call with the later ones (in its block) hidden, against the metric;
    a different figure from the NELBO, which averages over every order."""
    from tests.test_lm_eval import block_left_to_right_value, order_value, tiny_pipe

    process = kind.split("-")[0]
    pipe = tiny_pipe(process, time_conditioning=kind.endswith("conditioned"), shift=kind.endswith("shifted"))
    result, rows = left_to_right_figures(pipe, tmp_path)
    by_hand = [-(order_value(pipe, [], row, tuple(range(len(row)))) if process == "masked"
                 else block_left_to_right_value(pipe, [], row)) for row in rows]
    tokens = sum(len(row) for row in rows)
    left_to_right = result["left_to_right"]
    assert left_to_right["nats_per_token"] == pytest.approx(sum(by_hand) / tokens, rel=1e-5)
    assert left_to_right["bits_per_byte"] == pytest.approx(sum(by_hand) / math.log(2) / tokens, rel=1e-5)  # a byte each
    per_row = torch.tensor([nats / len(row) for nats, row in zip(by_hand, rows)], dtype=torch.float64)
    assert left_to_right["standard_error"] == pytest.approx(float(per_row.std() / math.sqrt(len(rows))), rel=1e-4)
    assert left_to_right["nats_per_token"] != pytest.approx(result["likelihood"]["nats_per_token"], rel=1e-3)


def test_left_to_right_of_a_score_entropy_model_is_a_clear_error(tmp_path):
    with pytest.raises(DDLMError, match="left-to-right likelihood is for autoregressive, masked and block"):
        left_to_right_figures(stream_pipeline("sedd-absorb"), tmp_path, text="abcdef" * 20)
