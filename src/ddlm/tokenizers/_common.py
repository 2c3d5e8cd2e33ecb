"""Helpers shared by the tokenizer implementations: special-token names, config files, hashing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ddlm.fileio import write_text_atomic
from ddlm.tokenizers.base import TOKENIZER_CONFIG

MASK_TOKEN = "<|mask|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


class ConfigTokenizer:
    """Shared by the tokenizers: the config file holding kind and special ids, and its hash.

    Subclasses set ``kind``, ``vocab_size`` and the special ids, and extend ``config``.
    """

    kind: str
    vocab_size: int
    mask_id: int
    eos_id: int
    pad_id: int

    def config(self) -> dict[str, Any]:
        """What ``tokenizer_config.json`` holds."""
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "mask_id": self.mask_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
        }

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer files into ``directory`` (which exists)."""
        write_config(directory, self.config())

    def fingerprint(self) -> str:
        """A short stable hash of the vocabulary, used to key the data cache."""
        return short_hash(self.config())


def write_config(directory: str | Path, config: dict[str, Any]) -> None:
    """Write ``config`` atomically as ``tokenizer_config.json`` in ``directory``."""
    text = json.dumps(config, indent=2) + "\n"
    write_text_atomic(Path(directory) / TOKENIZER_CONFIG, text)


def short_hash(description: dict[str, Any]) -> str:
    """First 16 hex chars of the sha256 of ``description`` serialised as canonical JSON."""
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def as_id_list(ids: Iterable[int], vocab_size: int) -> list[int]:
    """``ids`` as a list of Python ints, checked to lie in ``[0, vocab_size)``."""
    ids = [int(i) for i in ids]
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
        bad = next(i for i in ids if not 0 <= i < vocab_size)
        raise ValueError(f"token id {bad} is outside the vocabulary (size {vocab_size})")
    return ids


def one_line(error: BaseException) -> str:
    """The message of ``error`` collapsed onto one line."""
    return " ".join(str(error).split())
