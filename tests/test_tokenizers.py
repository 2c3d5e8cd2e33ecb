"""Tests of the char, byte and BPE tokenizers, their saving/loading and the factory."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from ddlm.errors import DDLMError
from ddlm.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
)

KINDS = ["char", "byte", "bpe"]
EXCERPT_CHARS = 100_000


@pytest.fixture
def excerpt(shakespeare_text: str) -> str:
    return shakespeare_text[:EXCERPT_CHARS]


@pytest.fixture
def make(shakespeare_text: str, excerpt: str) -> Callable[[str], Tokenizer]:
    """Builds a tokenizer of a kind; char sees the whole corpus, BPE trains on the excerpt."""

    def make_kind(kind: str) -> Tokenizer:
        texts = [shakespeare_text] if kind == "char" else [excerpt]
        return build_tokenizer(kind, texts=texts, vocab_size=512)

    return make_kind


def special_ids(tokenizer: Tokenizer) -> list[int]:
    return [tokenizer.mask_id, tokenizer.eos_id, tokenizer.pad_id]


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_on_shakespeare(make: Callable[[str], Tokenizer], excerpt: str, kind: str) -> None:
    tokenizer = make(kind)
    assert isinstance(tokenizer, Tokenizer)
    assert tokenizer.kind == kind
    ids = tokenizer.encode(excerpt)
    assert all(isinstance(i, int) and 0 <= i < tokenizer.vocab_size for i in ids)
    assert not set(special_ids(tokenizer)) & set(ids)
    assert tokenizer.decode(ids) == excerpt
    if kind == "bpe":
        assert tokenizer.vocab_size == 512
        assert len(ids) < 0.6 * len(excerpt.encode("utf-8"))  # merges were learned and used


@pytest.mark.parametrize("kind", KINDS)
def test_special_ids_are_the_last_three_and_skipped(make: Callable[[str], Tokenizer], kind: str) -> None:
    tokenizer = make(kind)
    mask, eos, pad = special_ids(tokenizer)
    assert sorted({mask, eos, pad}) == list(range(tokenizer.vocab_size - 3, tokenizer.vocab_size))
    ids = tokenizer.encode("To be")
    with_specials = [mask, *ids, eos, pad]
    assert tokenizer.decode(with_specials) == "To be"
    assert tokenizer.decode(with_specials, skip_special=False) == "<|mask|>To be<|endoftext|><|pad|>"
    with pytest.raises(ValueError):
        tokenizer.decode([tokenizer.vocab_size])


def test_char_vocabulary_is_sorted_distinct_characters(shakespeare_text: str) -> None:
    tokenizer = CharTokenizer.from_texts([shakespeare_text])
    assert tokenizer.chars == sorted(set(shakespeare_text))
    assert tokenizer.vocab_size == 65 + 3
    ids = tokenizer.encode(shakespeare_text)  # the whole 1 MB corpus
    assert len(ids) == len(shakespeare_text)
    assert ids[:3] == [tokenizer.chars.index(c) for c in shakespeare_text[:3]]


def test_char_unknown_character_error_is_one_line() -> None:
    tokenizer = CharTokenizer.from_texts(["abc", "cab "])
    with pytest.raises(DDLMError) as caught:
        tokenizer.encode("a bz\nq")
    message = str(caught.value)
    assert "\n" not in message
    assert "'z'" in message and "'\\n'" in message and "'q'" in message
    assert "byte or BPE" in message


def test_byte_round_trips_non_ascii() -> None:
    tokenizer = ByteTokenizer()
    text = "naïve café — 日本"
    ids = tokenizer.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert (tokenizer.vocab_size, tokenizer.mask_id, tokenizer.eos_id, tokenizer.pad_id) == (259, 256, 257, 258)
    assert tokenizer.decode([0xE6, 0x97]) == "\ufffd"  # a truncated character is replaced


@pytest.mark.parametrize("kind", KINDS)
def test_save_then_load_is_identical(
    make: Callable[[str], Tokenizer], excerpt: str, kind: str, tmp_path: Path
) -> None:
    tokenizer = make(kind)
    tokenizer.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert type(loaded) is type(tokenizer)
    assert special_ids(loaded) == special_ids(tokenizer)
    assert loaded.vocab_size == tokenizer.vocab_size
    assert loaded.encode(excerpt) == tokenizer.encode(excerpt)
    assert loaded.fingerprint() == tokenizer.fingerprint()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["kind"] == kind and config["mask_id"] == tokenizer.mask_id
    expected_files = {"tokenizer_config.json"} | ({"tokenizer.json"} if kind == "bpe" else set())
    assert {p.name for p in tmp_path.iterdir()} == expected_files  # no temporary files left


def test_fingerprint_is_short_and_tells_vocabularies_apart(excerpt: str) -> None:
    fingerprints = [
        CharTokenizer.from_texts(["abc"]).fingerprint(),
        CharTokenizer.from_texts(["abd"]).fingerprint(),
        ByteTokenizer().fingerprint(),
        BPETokenizer.train([excerpt], 300).fingerprint(),
        BPETokenizer.train([excerpt], 400).fingerprint(),
    ]
    assert len(set(fingerprints)) == len(fingerprints)
    assert all(len(f) == 16 and int(f, 16) >= 0 for f in fingerprints)
    assert CharTokenizer.from_texts(["cab"]).fingerprint() == fingerprints[0]


def test_fingerprint_is_stable_across_processes(excerpt: str, tmp_path: Path) -> None:
    tokenizer = BPETokenizer.train([excerpt], 300)
    tokenizer.save(tmp_path)
    code = (
        "import sys; from ddlm.tokenizers import load_tokenizer, CharTokenizer;"
        "print(load_tokenizer(sys.argv[1]).fingerprint(), CharTokenizer.from_texts(['hello']).fingerprint())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == [tokenizer.fingerprint(), CharTokenizer.from_texts(["hello"]).fingerprint()]


def test_gpt2_from_files(gpt2_dir: Path, tmp_path: Path) -> None:
    tokenizer = build_tokenizer("gpt2", gpt2_dir=gpt2_dir)
    assert isinstance(tokenizer, BPETokenizer) and tokenizer.kind == "bpe"
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert (tokenizer.eos_id, tokenizer.mask_id, tokenizer.pad_id) == (50256, 50257, 50258)
    assert tokenizer.vocab_size == 50259
    tokenizer.save(tmp_path)
    assert load_tokenizer(tmp_path).encode(" Hello world") == tokenizer.encode(" Hello world")


def test_bpe_encodes_literal_special_tokens_as_text(gpt2_dir: Path, excerpt: str) -> None:
    text = "The end.<|endoftext|>\nOnce <|mask|> upon <|pad|> a time."
    for tokenizer in (build_tokenizer("gpt2", gpt2_dir=gpt2_dir), BPETokenizer.train([excerpt], 300)):
        ids = tokenizer.encode(text)
        assert not set(special_ids(tokenizer)) & set(ids)
        assert tokenizer.decode(ids) == text


def test_bpe_chunked_encoding_equals_whole_encoding(gpt2_dir: Path, excerpt: str) -> None:
    """Long texts are encoded in pieces; the ids must equal those of one plain whole-text call."""
    reference = HFTokenizer(models.BPE.from_file(str(gpt2_dir / "vocab.json"), str(gpt2_dir / "merges.txt")))
    reference.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    reference.decoder = decoders.ByteLevel()
    rng = random.Random(0)
    pieces = ["a", "Bé", "1", ".", "'s", " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u3000", "\u180e", "\x1c", "日"]
    tricky = "".join(rng.choice(pieces) for _ in range(30_000))
    tokenizer = build_tokenizer("gpt2", gpt2_dir=gpt2_dir)
    for text in (excerpt, tricky):
        assert tokenizer.encode(text) == reference.encode(text).ids


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(DDLMError, match="no tokenizer_config.json"):
        load_tokenizer(tmp_path)
    config = tmp_path / "tokenizer_config.json"
    config.write_text("{not json", encoding="utf-8")
    with pytest.raises(DDLMError, match="cannot read"):
        load_tokenizer(tmp_path)
    config.write_text(json.dumps({"kind": "bpe", "vocab_size": 512}), encoding="utf-8")
    with pytest.raises(DDLMError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    config.write_text(json.dumps({"kind": "char", "vocab_size": 6}), encoding="utf-8")
    with pytest.raises(DDLMError, match="malformed"):
        load_tokenizer(tmp_path)
    CharTokenizer.from_texts(["abc"]).save(tmp_path)
    saved = json.loads(config.read_text(encoding="utf-8"))
    config.write_text(json.dumps({**saved, "mask_id": 0}), encoding="utf-8")
    with pytest.raises(DDLMError, match="does not match"):
        load_tokenizer(tmp_path)


def test_build_tokenizer_errors() -> None:
    with pytest.raises(DDLMError, match="'char', 'byte', 'bpe', 'gpt2'"):
        build_tokenizer("wordpiece")
    with pytest.raises(DDLMError, match="texts"):
        build_tokenizer("char")
    with pytest.raises(DDLMError, match="vocab_size"):
        build_tokenizer("bpe", texts=["abc"])
    with pytest.raises(DDLMError, match="at least 259"):
        build_tokenizer("bpe", texts=["abc"], vocab_size=100)
    with pytest.raises(DDLMError, match="gpt2_dir"):
        build_tokenizer("gpt2")
