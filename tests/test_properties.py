"""Property-based tests (hypothesis): configuration overrides and the CLI's numeric options.

Whatever text a user types for a setting or an option, the answer is the value itself or a
one-line DDLMError, never a traceback or a silently different value.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddlm.cli import main
from ddlm.errors import DDLMError
from ddlm.training.config import BOUNDS, Bounds, RunConfig, setting_type

DEFAULTS = RunConfig()
KEYS = sorted(f"{section}.{key}" for section, entries in DEFAULTS.to_dict().items() for key in entries)
NUMERIC = [key for key in KEYS if setting_type(getattr(DEFAULTS, key.split(".")[0]), key.split(".")[1])[0] in (int, float)]
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def kind_of(key: str) -> type:
    section, name = key.split(".")
    return setting_type(getattr(DEFAULTS, section), name)[0]


def test_every_numeric_setting_has_a_range():
    assert NUMERIC and not set(NUMERIC) - set(BOUNDS), set(NUMERIC) - set(BOUNDS)


def values_within(bounds: Bounds, kind: type) -> st.SearchStrategy:
    if kind is int:
        low = int(bounds.low) + (1 if bounds.low_open else 0)
        high = low + 10**6 if bounds.high is None else int(bounds.high) - (1 if bounds.high_open else 0)
        return st.integers(low, high)
    return st.floats(bounds.low, bounds.high, exclude_min=bounds.low_open, exclude_max=bounds.high_open,
                     allow_nan=False, allow_infinity=False)


@st.composite
def valid_settings(draw) -> tuple[str, float]:
    key = draw(st.sampled_from(NUMERIC))
    return key, draw(values_within(BOUNDS[key], kind_of(key)))


@PROPERTY_SETTINGS
@given(valid_settings())
def test_a_valid_override_round_trips(setting):
    key, value = setting
    section, name = key.split(".")
    config = DEFAULTS.with_overrides([f"{key}={value!r}"])
    assert getattr(getattr(config, section), name) == value
    assert type(getattr(getattr(config, section), name)) is kind_of(key)
    assert RunConfig.from_dict(config.to_dict()) == config


@st.composite
def invalid_settings(draw) -> tuple[str, str]:
    key = draw(st.sampled_from(NUMERIC))
    bounds = BOUNDS[key]
    outside = []
    if bounds.low is not None:
        outside.append(st.floats(max_value=bounds.low, exclude_max=not bounds.low_open, allow_nan=False,
                                 allow_infinity=False).filter(lambda v: v < bounds.low or not bounds.contains(v)))
    if bounds.high is not None:
        outside.append(st.floats(min_value=bounds.high, exclude_min=not bounds.high_open, allow_nan=False,
                                 allow_infinity=False))
    text = draw(st.one_of(
        st.one_of(*outside).map(repr),
        st.sampled_from(["nan", ".nan", "inf", "-.inf", "1e999", "true", "false", "[1]", "{a: 1}", "ten", "", "0x"]),
    ))
    return key, text


@PROPERTY_SETTINGS
@given(invalid_settings())
def test_an_invalid_numeric_override_is_a_one_line_error_naming_the_key(setting):
    key, text = setting
    section, name = key.split(".")
    if text == "" and setting_type(getattr(DEFAULTS, section), name)[1]:  # an empty value is null: a nullable setting takes it
        assert getattr(getattr(DEFAULTS.with_overrides([f"{key}="]), section), name) is None
        return
    with pytest.raises(DDLMError) as error:
        DEFAULTS.with_overrides([f"{key}={text}"]).validate()
    assert key in str(error.value) and "\n" not in str(error.value)


@PROPERTY_SETTINGS
@given(st.sampled_from(KEYS), st.text(max_size=12))
def test_any_text_for_any_key_is_a_value_or_a_ddlm_error(key, text):
    try:
        config = DEFAULTS.with_overrides([f"{key}={text}"])
        config.validate()
    except DDLMError as error:
        assert "\n" not in str(error)
        return
    value = config.to_dict()[key.split(".")[0]][key.split(".")[1]]
    assert not isinstance(value, float) or math.isfinite(value)
    assert RunConfig.from_dict(config.to_dict()) == config  # whatever was accepted is a setting the run can keep


@PROPERTY_SETTINGS
@given(st.decimals(0, 1000, places=2, allow_nan=False, allow_infinity=False).filter(lambda d: d > 0),
       st.sampled_from(["", "s", "m", "h"]))
def test_a_duration_is_read_wherever_the_time_budget_is_set(number, unit):
    seconds = float(number) * {"": 1, "s": 1, "m": 60, "h": 3600}[unit]
    config = DEFAULTS.with_overrides([f"optim.time_budget={number}{unit}"])
    assert config.optim.time_budget == pytest.approx(seconds)


# ----- the CLI's numeric options -----

def run_cli(args: list[str]) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    return code, err.getvalue().strip().splitlines()


class Prepared(Exception):
    """Raised by the stand-in for prepare_training: the options passed every check."""


@PROPERTY_SETTINGS
@given(st.sampled_from(["--max-steps", "--stop-after"]), st.integers(-10**12, 10**12))
def test_train_step_options_are_checked_before_any_work(option, value):
    captured = {}

    def prepare(config, *args, **kwargs):
        captured["config"] = config
        raise Prepared

    with mock.patch("ddlm.training.prepare_training", prepare):
        try:
            code, err = run_cli(["train", "--preset", "tiny", "--out", "unused", option, str(value)])
        except Prepared:
            assert value >= 1
            if option == "--max-steps":
                assert captured["config"].optim.max_steps == value
            return
    assert value < 1 and code == 2 and err == [f"error: {option} must be at least 1, got {value}"]


@PROPERTY_SETTINGS
@given(st.sampled_from([("--draws", 1), ("--max-sequences", 0), ("-n", 1)]), st.integers(-10**6, 10**6))
def test_eval_count_options_are_checked_before_any_work(option, value):
    (name, minimum) = option
    code, err = run_cli(["eval", "--model", "/nonexistent/ddlm-model", name, str(value)])
    assert code == 2 and len(err) == 1
    if value < minimum:
        flag = "--num-samples" if name == "-n" else name
        assert err[0] == f"error: {flag} must be at least {minimum}, got {value}"
    else:
        assert "/nonexistent/ddlm-model" in err[0]  # the options passed; the model is what is missing


def test_overrides_may_follow_options(tmp_path: Path):
    captured = {}

    def prepare(config, *args, **kwargs):
        captured["config"] = config
        raise Prepared

    with mock.patch("ddlm.training.prepare_training", prepare), pytest.raises(Prepared):
        main(["train", "--preset", "tiny", "optim.lr=1e-3", "--out", str(tmp_path), "model.d_model=64",
              "--max-steps", "3", "log.log_every=2"])
    config = captured["config"]
    assert (config.optim.lr, config.model.d_model, config.optim.max_steps, config.log.log_every) == (1e-3, 64, 3, 2)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_code:
        main(["train", "--preset", "tiny", "--out", str(tmp_path), "--bogus"])
    assert exit_code.value.code == 2 and "ddlm train: error: unrecognized arguments: --bogus" in err.getvalue()
    assert err.getvalue().startswith("usage: ddlm train ")  # the command's own flags, not the list of commands


# ----- infill templates and tokenizers -----

@st.composite
def templates(draw) -> tuple[str, list[int | None]]:
    """A template written from random pieces (text with brackets and backslashes escaped, masks) and its parse."""
    pieces = draw(st.lists(st.one_of(st.text(alphabet="ab []\\\u00e9", min_size=1, max_size=6), st.integers(1, 20)),
                           max_size=8))
    template, expected = [], []
    for piece in pieces:
        if isinstance(piece, int):
            template.append("[MASK]" if piece == 1 else f"[MASK*{piece}]")
            expected.extend([None] * piece)
        else:
            template.append(piece.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]"))
            expected.extend(ord(char) for char in piece)
    return "".join(template), expected


def char_codes(text: str) -> list[int]:
    return [ord(char) for char in text]


@PROPERTY_SETTINGS
@given(templates())
def test_an_infill_template_parses_to_its_pieces(case):
    from ddlm.samplers.canvas import parse_template

    template, expected = case
    if None not in expected:
        with pytest.raises(DDLMError, match="no \\[MASK\\]"):
            parse_template(template, char_codes)
        return
    assert parse_template(template, char_codes) == expected


@PROPERTY_SETTINGS
@given(st.text(alphabet="ab[]\\MASK*0123456789", max_size=30), st.integers(1, 64))
def test_any_template_text_parses_within_the_context_or_is_a_ddlm_error(template, max_tokens):
    from ddlm.samplers.canvas import parse_template

    try:
        row = parse_template(template, char_codes, max_tokens)
    except DDLMError as error:
        assert "\n" not in str(error)
        return
    assert 0 < len(row) <= max_tokens and None in row


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    from ddlm.tokenizers import build_tokenizer

    corpus = ["To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer"] * 20
    return {"byte": build_tokenizer("byte"), "char": build_tokenizer("char", texts=corpus),
            "bpe": build_tokenizer("bpe", texts=corpus, vocab_size=300)}


@PROPERTY_SETTINGS
@given(text=st.text(max_size=40))
def test_byte_and_bpe_tokenizers_round_trip_any_text(tokenizers, text):
    for kind in ("byte", "bpe"):
        tokenizer = tokenizers[kind]
        ids = tokenizer.encode(text)
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
        assert tokenizer.decode(ids) == text, kind


@PROPERTY_SETTINGS
@given(text=st.text(alphabet="To be, or nt th qusi:W'mdfr", max_size=40))
def test_the_char_tokenizer_round_trips_text_of_its_alphabet(tokenizers, text):
    tokenizer = tokenizers["char"]
    assert tokenizer.decode(tokenizer.encode(text)) == text
