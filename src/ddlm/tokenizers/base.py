"""The one protocol every ddlm tokenizer follows."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

TOKENIZER_CONFIG = "tokenizer_config.json"


@runtime_checkable
class Tokenizer(Protocol):
    """Maps text to token ids and back.

    Every tokenizer has three distinct special ids: ``mask_id`` (the absorbing state of
    masked diffusion), ``eos_id`` (end of text, also the document separator) and ``pad_id``
    (never predicted, never counted in a loss). ddlm's own tokenizers put them at the end of
    the vocabulary, but no code outside them may rely on where they sit: a Hugging Face
    tokenizer (``ddlm.hf``) keeps its own ids, e.g. BERT's ``[PAD]`` is 0 and ``[MASK]`` 103.
    """

    kind: str
    vocab_size: int  # includes the special ids
    mask_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special ids are added)."""

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        """Text of ``ids``; special ids are dropped unless ``skip_special`` is False."""

    def byte_lengths(self) -> list[int]:
        """UTF-8 bytes of text each id stands for (0 for special ids): the unit of bits per byte."""

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer files into ``directory`` (which exists)."""

    def fingerprint(self) -> str:
        """A short stable hash of the vocabulary, used to key the data cache."""
