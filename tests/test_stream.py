"""DiffusionPipeline.stream: one step per change of the canvas, ending where sample() ends; SamplerOptions validation."""

from __future__ import annotations

import math

import pytest
import torch

from ddlm import DiffusionPipeline
from ddlm.errors import DDLMError
from ddlm.eval.report import EvalSettings, sample_metrics
from ddlm.families import build_process, get_family
from ddlm.processes import Vocabulary
from ddlm.samplers import SamplerOptions
from ddlm.samplers.step import MASK_GLYPH
from ddlm.tokenizers import CharTokenizer
from tests.test_sampling_pinned import CASES, tiny_model

TOKENIZER = CharTokenizer("abcdef")  # ids 0..5, then mask 6, eos 7, pad 8


def pipeline(process: str, time_conditioning: bool = False, precision: str = "fp32") -> DiffusionPipeline:
    model = tiny_model(process, time_conditioning)
    return DiffusionPipeline(model, TOKENIZER, build_process({"name": process}, Vocabulary.of(TOKENIZER)),
                             precision=precision)


def split_case(case: dict) -> tuple[DiffusionPipeline, dict]:
    options = dict(case)
    pipe = pipeline(options.pop("process"), options.pop("time_conditioning", False))
    infill = "a[MASK*3]bc[MASK*4]" if options.pop("canvas", None) == "infill" else None
    canvas = {"infill": infill} if infill else {"prompt": ["ab", "cd"], "length": 12}
    return pipe, {**canvas, "num_samples": 2, "steps": 8, "seed": 3, **options}


@pytest.mark.parametrize("name", list(CASES))
def test_the_last_step_of_the_stream_is_the_sample(name):
    pipe, arguments = split_case(CASES[name])
    steps = list(pipe.stream(**arguments))
    output = pipe.sample(**arguments)
    assert torch.equal(steps[-1].tokens, output.tokens) and steps[-1].model_calls == output.model_calls
    assert steps[-1].texts == pipe.generate(**arguments)
    assert all(before.index < after.index for before, after in zip(steps, steps[1:]))  # sampler steps, in order
    assert all(step.changed.any() for step in steps[:-1])  # one step per change of the canvas (and the last)
    mask = TOKENIZER.mask_id
    for before, step in zip([None, *steps], steps):
        previous = before.tokens if before is not None else step.canvas.tokens.masked_fill(step.canvas.generated, mask)
        if name.startswith("sedd-uniform"):  # starts from uniform noise, not MASK
            assert before is None or torch.equal(step.revealed, step.tokens != previous)
        else:  # revealed: MASK became a token; remasked: a token became MASK; nothing else moves
            assert torch.equal(step.revealed, (previous == mask) & (step.tokens != mask))
            assert torch.equal(step.remasked, (previous != mask) & (step.tokens == mask))
            assert torch.equal(step.tokens[~step.changed], previous[~step.changed])
        drawn = ~torch.isnan(step.confidence)
        assert (drawn[step.revealed]).all() and ((step.confidence[drawn] >= 0) & (step.confidence[drawn] <= 1)).all()
    assert steps[-1].noise == 0.0


@pytest.mark.parametrize("name", ["masked: ancestral", "masked: confidence", "ar", "sedd-absorb: euler"])
def test_noise_is_the_masked_fraction_of_the_generated_positions(name):
    pipe, arguments = split_case(CASES[name])
    for step in pipe.stream(**arguments):
        generated = step.canvas.generated
        fraction = ((step.tokens == TOKENIZER.mask_id) & generated).sum(1) / generated.sum(1)
        assert step.noise == pytest.approx(float(fraction.mean()))


def test_sedd_uniform_noise_falls_with_the_schedule_to_zero():
    pipe, arguments = split_case(CASES["sedd-uniform: analytic"])
    steps = list(pipe.stream(**arguments))  # step i of 8 ends at time 1 - (i + 1) / 8
    expected = [-math.expm1(-float(pipe.process.sigma_bar(torch.tensor(1 - (step.index + 1) / 8)))) for step in steps[:-1]]
    assert [step.noise for step in steps[:-1]] == pytest.approx(expected)
    assert steps[-1].index == 7 and steps[-1].noise == 0.0  # the last step denoises to sigma_bar = 0


def test_batches_give_the_samples_of_one_batch():
    pipe = pipeline("masked")
    arguments = {"prompt": ["ab", "cd"], "num_samples": 5, "length": 6, "steps": 6, "seed": 11, "policy": "confidence"}
    whole = pipe.sample(**arguments, batch_size=64)
    batched = pipe.sample(**arguments, batch_size=3)  # batches of 3, 3, 3 and 1 samples
    assert torch.equal(whole.tokens, batched.tokens) and whole.model_calls <= batched.model_calls
    assert pipe.generate(**arguments, batch_size=2) == pipe.generate(**arguments)
    firsts = sorted({step.first_sample for step in pipe.stream(**arguments, batch_size=4)})
    assert firsts == [0, 4, 8]
    outputs = list(pipe.sample_batches(**arguments, batch_size=4))
    assert [output.tokens.shape[0] for output in outputs] == [4, 4, 2]


def test_batches_of_different_widths_are_joined_with_padding():
    pipe = pipeline("masked")
    arguments = {"prompt": ["a", "bcd"], "num_samples": 3, "length": 4, "steps": 4, "seed": 2}
    whole, batched = pipe.sample(**arguments), pipe.sample(**arguments, batch_size=3)
    assert batched.tokens.shape == whole.tokens.shape == (6, 7)
    for name in ("tokens", "generated", "active"):
        assert torch.equal(getattr(batched.canvas, name), getattr(whole.canvas, name))
    assert (batched.tokens[:3, 5:] == TOKENIZER.pad_id).all()
    texts = pipe.generate(**arguments, batch_size=3, stop_at_eos=False)
    assert all(text.startswith("a") for text in texts[:3]) and all(text.startswith("bcd") for text in texts[3:])


def test_without_a_seed_one_is_drawn_reported_and_the_global_rng_is_untouched():
    pipe = pipeline("masked")
    state = torch.random.get_rng_state()
    output = pipe.sample(length=8, steps=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(pipe.sample(length=8, steps=4, seed=output.seed).tokens, output.tokens)
    assert all(step.seed == output.seed for step in pipe.stream(length=8, steps=4, seed=output.seed))
    assert pipe.sample(length=8, steps=4).seed != output.seed


def test_mixed_precision_does_not_leak_out_of_the_stream():
    pipe = pipeline("masked", precision="bf16")
    for _ in pipe.stream(length=8, steps=4, seed=0):
        assert not torch.is_autocast_enabled("cpu")


def test_an_options_object_and_keywords_are_the_same_request():
    pipe = pipeline("masked")
    options = SamplerOptions(steps=6, policy="margin", seed=5)
    by_keywords = pipe.generate(length=8, steps=6, policy="margin", seed=5)
    assert pipe.generate(options=options, length=8) == by_keywords
    assert pipe.generate("ab", options, length=8, policy="entropy") == pipe.generate(
        "ab", length=8, steps=6, policy="entropy", seed=5)


@pytest.mark.parametrize(("options", "message"), [
    ({"temperature": math.inf}, "temperature must be a finite number at least 0"),
    ({"temperature": math.nan}, "temperature must be a finite number at least 0"),
    ({"temperature": -0.5}, "temperature must be at least 0"),
    ({"threshold": 2.0, "policy": "threshold"}, "threshold must be in (0, 1]"),
    ({"threshold": -1.0, "policy": "threshold"}, "threshold must be in (0, 1]"),
    ({"threshold": math.nan, "policy": "threshold"}, "threshold must be a finite number in (0, 1]"),
    ({"steps": 0}, "steps must be at least 1"),
    ({"steps": 2.5}, "steps must be an integer"),
    ({"top_k": 0}, "top_k must be at least 1"),
    ({"top_p": 0.0}, "top_p must be in (0, 1]"),
    ({"top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"seed": -1}, "seed must be in [0, 2**63)"),
    ({"seed": 2**63}, "seed must be in [0, 2**63)"),
    ({"remask_eta": 1.5}, "remask_eta must be in [0, 1]"),
    ({"block_length": 0}, "block_length must be at least 1"),
    ({"min_length": -1}, "min_length must be at least 0"),
    ({"policy": "greedy"}, "unknown policy 'greedy'"),
    ({"method": "heun"}, "unknown method"),
    ({"remask": "cap", "policy": "confidence"}, "remasking works with the ancestral policy"),
    ({"threshold": 0.5}, "a threshold needs a ranked policy"),
])
def test_bad_options_are_one_line_errors_naming_the_option(options, message):
    with pytest.raises(DDLMError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]").replace("*", r"\*").replace("+", r"\+")) as error:
        SamplerOptions(**options)
    assert "\n" not in str(error.value)
    assert error.value.field == next(name for name in ("remask", "threshold", *options) if name in options)


def test_pipeline_refuses_unknown_and_foreign_options_and_oversized_templates():
    with pytest.raises(DDLMError, match="unknown sampler option polcy"):
        pipeline("masked").generate(length=4, polcy="confidence")
    with pytest.raises(DDLMError, match="the ar sampler has no option policy"):
        pipeline("ar").generate(length=4, policy="confidence")
    with pytest.raises(DDLMError, match="batch_size must be at least 1"):
        pipeline("masked").generate(length=4, batch_size=0)
    with pytest.raises(DDLMError, match="context is 32"):
        pipeline("masked").generate(infill="ab[MASK*999999999999]")  # refused before allocating
    with pytest.raises(DDLMError, match="context is 32"):
        pipeline("masked").generate(infill="[MASK]" + "a" * 40)


def test_a_canvas_the_options_do_not_fit_raises_before_the_first_step():
    with pytest.raises(DDLMError, match="does not divide"):
        pipeline("masked").stream(length=10, block_length=3)
    with pytest.raises(DDLMError, match="left to right"):
        pipeline("ar").stream(infill="a[MASK]b")


def test_eval_options_drop_what_does_not_apply_to_the_process():
    changes = {"policy": "confidence", "method": "euler", "steps": 9, "seed": 0}
    settings = EvalSettings(metrics=("samples",), num_samples=1, sampler=changes)
    reported = sample_metrics(pipeline("ar"), None, settings)["sampler"]
    assert reported["steps"] == 9 and "policy" not in reported and "method" not in reported
    assert sample_metrics(pipeline("masked"), None, settings)["sampler"]["policy"] == "confidence"
    options = SamplerOptions(**changes)
    masked = get_family("masked").applicable(options)
    assert masked["policy"] == "confidence" and "method" not in masked
    assert get_family("sedd-uniform").applicable(options)["method"] == "euler"


@pytest.mark.parametrize("process", ["masked", "ar"])
def test_canvas_texts_show_the_masked_positions(process):
    pipe = pipeline(process)
    steps = list(pipe.stream("ab", length=10, steps=5, seed=1, num_samples=2))
    for step in steps:
        for row, (canvas, text) in enumerate(zip(step.canvas_texts, step.texts)):
            tokens, generated = step.tokens[row].tolist(), step.canvas.generated[row].tolist()
            end = next((i for i, (t, g) in enumerate(zip(tokens, generated)) if g and t == TOKENIZER.eos_id), None)
            masked = tokens[:end].count(TOKENIZER.mask_id)  # up to a generated end-of-text, where the text ends
            assert canvas.count(MASK_GLYPH) == masked and canvas.replace(MASK_GLYPH, "") == text
            assert canvas.startswith("ab")
    # the first step reveals few of the ten positions (a sample that drew end-of-text at once shows none)
    assert any(text.endswith(MASK_GLYPH * 5) for text in steps[0].canvas_texts)
    assert steps[-1].canvas_texts == steps[-1].texts  # nothing masked at the end
