"""Tokenizers: character, byte and byte-level BPE, with saving, loading and a factory."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ddlm.errors import DDLMError
from ddlm.tokenizers._common import one_line
from ddlm.tokenizers.base import TOKENIZER_CONFIG, Tokenizer
from ddlm.tokenizers.bpe import BPETokenizer
from ddlm.tokenizers.byte import ByteTokenizer
from ddlm.tokenizers.char import CharTokenizer

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "TOKENIZER_KINDS",
    "Tokenizer",
    "build_tokenizer",
    "load_tokenizer",
]

TOKENIZER_KINDS = ("char", "byte", "bpe", "gpt2")

_LOADERS: dict[str, Callable[[dict[str, Any], Path], Tokenizer]] = {
    "char": CharTokenizer.from_config,
    "byte": ByteTokenizer.from_config,
    "bpe": BPETokenizer.from_config,
}
_SPECIAL_FIELDS = ("vocab_size", "mask_id", "eos_id", "pad_id")


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer saved in ``directory`` by its ``save`` method."""
    directory = Path(directory)
    path = directory / TOKENIZER_CONFIG
    if not path.is_file():
        raise DDLMError(f"no {TOKENIZER_CONFIG} in {directory}: is it a ddlm model directory?")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DDLMError(
            f"cannot read {path} ({one_line(error)}): restore the file or rebuild the tokenizer"
        ) from None
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind not in _LOADERS:
        raise DDLMError(
            f"{path} names no known tokenizer kind (got {kind!r}, expected one of "
            f"{', '.join(_LOADERS)}): restore the file or rebuild the tokenizer"
        )
    try:
        tokenizer = _LOADERS[kind](config, directory)
    except (KeyError, TypeError) as error:
        raise DDLMError(
            f"{path} is incomplete or malformed ({type(error).__name__}: {one_line(error)}): "
            "restore the file or rebuild the tokenizer"
        ) from None
    expected = {field: config.get(field) for field in _SPECIAL_FIELDS}
    actual = {field: getattr(tokenizer, field) for field in _SPECIAL_FIELDS}
    if expected != actual:
        raise DDLMError(
            f"{path} does not match its vocabulary (config {expected}, vocabulary {actual}): "
            "restore the tokenizer files or rebuild the tokenizer"
        )
    return tokenizer


def build_tokenizer(
    kind: str,
    texts: Sequence[str] | None = None,
    vocab_size: int | None = None,
    gpt2_dir: str | Path | None = None,
) -> Tokenizer:
    """A new tokenizer of ``kind``: "char" (needs ``texts``), "byte", "bpe" (needs ``texts``
    and ``vocab_size``) or "gpt2" (needs ``gpt2_dir`` with vocab.json and merges.txt; its
    ``kind`` attribute is "bpe")."""
    if kind == "char":
        if texts is None:
            raise DDLMError("the 'char' tokenizer is built from a corpus: pass the training texts")
        return CharTokenizer.from_texts(texts)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        if texts is None or vocab_size is None:
            raise DDLMError(
                "the 'bpe' tokenizer is trained on a corpus: pass the training texts and a vocab_size"
            )
        return BPETokenizer.train(texts, vocab_size)
    if kind == "gpt2":
        if gpt2_dir is None:
            raise DDLMError(
                "the 'gpt2' tokenizer is read from files: pass gpt2_dir, a folder with GPT-2's "
                "vocab.json and merges.txt"
            )
        gpt2_dir = Path(gpt2_dir)
        return BPETokenizer.from_gpt2_files(gpt2_dir / "vocab.json", gpt2_dir / "merges.txt")
    raise DDLMError(
        f"unknown tokenizer kind {kind!r}: choose one of {', '.join(map(repr, TOKENIZER_KINDS))}"
    )
