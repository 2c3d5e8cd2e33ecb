"""Character-level tokenizer: one id per distinct character of the training corpus."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ddlm.errors import DDLMError
from ddlm.tokenizers._common import (
    EOS_TOKEN,
    MASK_TOKEN,
    PAD_TOKEN,
    ConfigTokenizer,
    as_id_list,
)

_SHOWN_UNKNOWN = 5  # offending characters named in the error message


class CharTokenizer(ConfigTokenizer):
    """Ids ``0..len(chars)-1`` are the characters, then mask, eos and pad."""

    kind = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        if not chars:
            raise DDLMError("the character vocabulary is empty: build it from a non-empty corpus")
        if any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise DDLMError(
                "the character vocabulary must hold distinct single characters: "
                "rebuild the tokenizer from the training corpus"
            )
        self.chars = chars
        self.mask_id, self.eos_id, self.pad_id = len(chars), len(chars) + 1, len(chars) + 2
        self.vocab_size = len(chars) + 3
        self._index = {c: i for i, c in enumerate(chars)}
        self._pieces = chars + [MASK_TOKEN, EOS_TOKEN, PAD_TOKEN]

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        """Vocabulary of the sorted distinct characters of ``texts``."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        return cls(sorted(chars))

    @classmethod
    def from_config(cls, config: dict[str, Any], directory: Path) -> CharTokenizer:
        """Rebuild from a saved ``tokenizer_config.json`` (``directory`` holds nothing else)."""
        return cls(config["chars"])

    def encode(self, text: str) -> list[int]:
        try:
            return list(map(self._index.__getitem__, text))
        except KeyError:
            raise self._unknown_characters(text) from None

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        ids = as_id_list(ids, self.vocab_size)
        if skip_special:
            ids = [i for i in ids if i < self.mask_id]  # the special ids come last
        return "".join(map(self._pieces.__getitem__, ids))

    def byte_lengths(self) -> list[int]:
        return [len(c.encode("utf-8")) for c in self.chars] + [0, 0, 0]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "chars": self.chars}

    def _unknown_characters(self, text: str) -> DDLMError:
        unknown = list(dict.fromkeys(c for c in text if c not in self._index))
        shown = ", ".join(map(repr, unknown[:_SHOWN_UNKNOWN]))
        if len(unknown) > _SHOWN_UNKNOWN:
            shown += f" and {len(unknown) - _SHOWN_UNKNOWN} more"
        return DDLMError(
            f"the text has {len(unknown)} character(s) outside the character vocabulary ({shown}): "
            "use characters from the training corpus, or train with a byte or BPE tokenizer"
        )

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
