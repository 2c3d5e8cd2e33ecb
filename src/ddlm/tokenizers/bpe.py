"""Byte-level BPE tokenizer (GPT-2 style) backed by Hugging Face ``tokenizers``."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from ddlm.errors import DDLMError
from ddlm.fileio import write_text_atomic
from ddlm.tokenizers._common import (
    EOS_TOKEN,
    MASK_TOKEN,
    PAD_TOKEN,
    ConfigTokenizer,
    as_id_list,
    one_line,
    short_hash,
)

TOKENIZER_JSON = "tokenizer.json"

_SPECIAL_TOKENS = [EOS_TOKEN, MASK_TOKEN, PAD_TOKEN]  # appended in this order, as in GPT-2
_MIN_VOCAB_SIZE = 256 + len(_SPECIAL_TOKENS)
_CHUNK_CHARS = 4096

# A newline between two non-whitespace characters is always a pre-token boundary of the
# GPT-2 byte-level regex (which never looks behind), so encoding the text in pieces split
# right after such newlines gives exactly the ids of encoding it whole, about twice as fast.
# U+180E is excluded too because older Unicode tables count it as whitespace.
_SAFE_SPLIT = re.compile(r"(?<=[^\s\u180e]\n)(?=[^\s\u180e])")


class BPETokenizer(ConfigTokenizer):
    """Byte-level BPE; the special tokens are ``<|endoftext|>``, ``<|mask|>`` and ``<|pad|>``.

    Literal special-token strings in the text (for example ``"<|endoftext|>"``) are encoded
    as ordinary text: special ids only ever come from the data layer, never from ``encode``.
    """

    kind = "bpe"

    def __init__(self, tokenizer: HFTokenizer) -> None:
        specials = tokenizer.get_added_tokens_decoder()
        ids = [tokenizer.token_to_id(token) for token in (MASK_TOKEN, EOS_TOKEN, PAD_TOKEN)]
        if any(i is None or i not in specials or not specials[i].special for i in ids):
            raise DDLMError(
                f"the BPE tokenizer lacks the special tokens {', '.join(_SPECIAL_TOKENS)}: "
                "build it with BPETokenizer.train or BPETokenizer.from_gpt2_files"
            )
        tokenizer.encode_special_tokens = True  # match "<|endoftext|>" etc. as plain text
        self._tokenizer = tokenizer
        self.mask_id, self.eos_id, self.pad_id = ids
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self._fingerprint: str | None = None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Train on ``texts``; ``vocab_size`` counts the 3 special tokens, which get the last ids."""
        if vocab_size < _MIN_VOCAB_SIZE:
            raise DDLMError(
                f"BPE vocab_size {vocab_size} is too small: use at least {_MIN_VOCAB_SIZE} "
                "(256 byte tokens + 3 special tokens)"
            )
        tokenizer = _byte_level(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - len(_SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer)
        tokenizer.add_special_tokens(_SPECIAL_TOKENS)
        return cls(tokenizer)

    @classmethod
    def from_gpt2_files(cls, vocab_json: str | Path, merges_txt: str | Path) -> BPETokenizer:
        """GPT-2's tokenizer (eos 50256) plus ``<|mask|>`` 50257 and ``<|pad|>`` 50258."""
        for path in (vocab_json, merges_txt):
            if not Path(path).is_file():
                raise DDLMError(
                    f"GPT-2 tokenizer file {path} not found: "
                    "pass the folder that holds GPT-2's vocab.json and merges.txt"
                )
        try:
            model = models.BPE.from_file(str(vocab_json), str(merges_txt))
        except Exception as error:  # tokenizers raises a plain Exception on malformed files
            raise DDLMError(
                f"cannot read GPT-2 tokenizer files {vocab_json} and {merges_txt} "
                f"({one_line(error)}): pass GPT-2's original vocab.json and merges.txt"
            ) from None
        tokenizer = _byte_level(model)
        if tokenizer.token_to_id(EOS_TOKEN) is None:
            raise DDLMError(
                f"{vocab_json} has no {EOS_TOKEN} token: pass GPT-2's original vocab.json"
            )
        tokenizer.add_special_tokens(_SPECIAL_TOKENS)
        return cls(tokenizer)

    @classmethod
    def from_config(cls, config: dict[str, Any], directory: Path) -> BPETokenizer:
        """Rebuild from the ``tokenizer.json`` saved next to ``tokenizer_config.json``."""
        path = Path(directory) / TOKENIZER_JSON
        if not path.is_file():
            raise DDLMError(
                f"no {TOKENIZER_JSON} in {directory} although its tokenizer config says 'bpe': "
                "restore the file or rebuild the tokenizer"
            )
        try:
            tokenizer = HFTokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a plain Exception on malformed files
            raise DDLMError(
                f"cannot read {path} ({one_line(error)}): restore the file or rebuild the tokenizer"
            ) from None
        return cls(tokenizer)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for chunk in _chunks(text):
            ids.extend(self._tokenizer.encode(chunk, add_special_tokens=False).ids)
        return ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        """Text of ``ids``; invalid UTF-8 becomes U+FFFD."""
        ids = as_id_list(ids, self.vocab_size)
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special)

    def byte_lengths(self) -> list[int]:
        """Byte-level BPE spells each byte as one character, so a token's length is its byte count."""
        specials = self._tokenizer.get_added_tokens_decoder()
        return [0 if i in specials else len(self._tokenizer.id_to_token(i)) for i in range(self.vocab_size)]

    def save(self, directory: str | Path) -> None:
        write_text_atomic(Path(directory) / TOKENIZER_JSON, self._tokenizer.to_str())
        super().save(directory)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = short_hash({**self.config(), "tokenizer": self._tokenizer.to_str()})
        return self._fingerprint

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def _byte_level(model: models.Model) -> HFTokenizer:
    """A tokenizer with GPT-2's byte-level pre-tokenizer and decoder around ``model``."""
    tokenizer = HFTokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _chunks(text: str) -> Iterator[str]:
    """``text`` in pieces of about ``_CHUNK_CHARS`` characters, split only at safe newlines."""
    start = 0
    while len(text) - start > _CHUNK_CHARS:
        split = _SAFE_SPLIT.search(text, start + _CHUNK_CHARS)
        if split is None:
            break
        yield text[start : split.start()]
        start = split.start()
    yield text[start:]
