"""Byte-level tokenizer: the 256 UTF-8 byte values, then mask, eos and pad."""

from __future__ import annotations

from itertools import groupby
from pathlib import Path
from typing import Any

from ddlm.tokenizers._common import (
    EOS_TOKEN,
    MASK_TOKEN,
    PAD_TOKEN,
    ConfigTokenizer,
    as_id_list,
)


class ByteTokenizer(ConfigTokenizer):
    """Ids 0..255 are UTF-8 bytes; mask=256, eos=257, pad=258."""

    kind = "byte"
    mask_id = 256
    eos_id = 257
    pad_id = 258
    vocab_size = 259

    _SPECIAL_TEXT = {mask_id: MASK_TOKEN, eos_id: EOS_TOKEN, pad_id: PAD_TOKEN}

    @classmethod
    def from_config(cls, config: dict[str, Any], directory: Path) -> ByteTokenizer:
        """Rebuild from a saved ``tokenizer_config.json`` (nothing to read: the vocabulary is fixed)."""
        return cls()

    def byte_lengths(self) -> list[int]:
        return [1] * 256 + [0, 0, 0]

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        """Text of ``ids``; invalid UTF-8 becomes U+FFFD."""
        ids = as_id_list(ids, self.vocab_size)
        if skip_special:
            return bytes(i for i in ids if i < self.mask_id).decode("utf-8", errors="replace")
        parts = []
        for is_byte, run in groupby(ids, key=lambda i: i < self.mask_id):
            if is_byte:
                parts.append(bytes(run).decode("utf-8", errors="replace"))
            else:
                parts.extend(self._SPECIAL_TEXT[i] for i in run)
        return "".join(parts)


    def __repr__(self) -> str:
        return "ByteTokenizer()"
