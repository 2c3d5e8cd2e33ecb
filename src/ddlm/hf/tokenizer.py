"""ddlm's Tokenizer protocol over a Hugging Face tokenizer (``AutoTokenizer``).

The special ids come from the tokenizer itself, wherever they sit in its vocabulary:

- ``mask_id``: the tokenizer's mask token, else ``mask_token_id`` of the model's config.json
  (LLaDA names its mask there), else a token spelt like a mask (``<|mdm_mask|>``, ``<|mask|>``, ...).
- ``eos_id``: the end-of-text token, else the separator (BERT's ``[SEP]``).
- ``pad_id``: the padding token unless it is also an end token (the tokenizer's, or one of
  ``end_ids``: the model config's ``eos_token_id``), else the begin-of-text, unknown or
  classifier token. The masked process never predicts the pad id (nor counts it in a loss),
  so it must not be a token the model is meant to write: LLaDA fills the tail of an answer
  with its end-of-text token, which its config also names as padding.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ddlm.errors import DDLMError
from ddlm.hf.files import save_through_staging
from ddlm.tokenizers._common import short_hash

MASK_TOKEN_NAMES = ("<|mdm_mask|>", "<|mask|>", "[MASK]", "<mask>")


class HFTokenizer:
    """A ``transformers`` fast tokenizer seen through ddlm's :class:`~ddlm.tokenizers.Tokenizer` protocol."""

    kind = "hf"

    def __init__(self, tokenizer: Any, mask_id: int | None = None, end_ids: tuple[int, ...] = ()):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise DDLMError(
                f"the tokenizer {type(tokenizer).__name__} has no fast (tokenizers-library) backend; "
                "ddlm needs a tokenizer.json next to the model"
            )
        self.hf = tokenizer
        self.vocab_size = len(tokenizer)
        self.mask_id = first_id("a mask token (mask_token in the tokenizer or mask_token_id in config.json)",
                                find_mask_id(tokenizer, mask_id))
        self.eos_id = first_id("an end-of-text or separator token", tokenizer.eos_token_id, tokenizer.sep_token_id)
        self.pad_id = first_id("a padding token distinct from end-of-text and mask (pad, bos, unk or cls token)",
                               find_pad_id(tokenizer, {self.mask_id, self.eos_id, *end_ids}))
        for name in ("mask_id", "eos_id", "pad_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise DDLMError(f"the tokenizer's {name} {getattr(self, name)} lies outside its vocabulary "
                                f"of {self.vocab_size}; fix tokenizer_config.json or config.json")
        # Text is encoded with special-token strings taken literally: a prompt that says "[MASK]"
        # must not put a mask (or any control token) among the given tokens.
        self._plain = type(backend).from_str(backend.to_str())
        self._plain.encode_special_tokens = True

    def __repr__(self) -> str:
        return (f"HFTokenizer({type(self.hf).__name__}, vocab_size={self.vocab_size}, mask_id={self.mask_id}, "
                f"eos_id={self.eos_id}, pad_id={self.pad_id})")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no special ids are added, and special-token strings stay text."""
        return self._plain.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def byte_lengths(self) -> list[int]:
        """UTF-8 bytes of each id decoded alone (0 for special ids).

        Approximate for tokenizers whose pieces carry spacing only in context (WordPiece: the
        space between words is not counted, and the ``##`` of word continuations is removed).
        """
        prefix = getattr(self.hf.backend_tokenizer.model, "continuing_subword_prefix", None) or ""
        special = set(self.hf.all_special_ids) | {self.mask_id, self.eos_id, self.pad_id}
        texts = self.hf.batch_decode([[i] for i in range(self.vocab_size)])
        pieces = self.hf.convert_ids_to_tokens(list(range(self.vocab_size)))
        lengths = []
        for i, (text, piece) in enumerate(zip(texts, pieces)):
            if prefix and piece is not None and piece.startswith(prefix) and text.startswith(prefix):
                text = text[len(prefix):]
            lengths.append(0 if i in special else len(text.encode("utf-8")))
        return lengths

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer files (Hugging Face format) into ``directory``."""
        save_through_staging(directory, self.hf.save_pretrained)

    def fingerprint(self) -> str:
        """A hash of the whole tokenizer definition and of the special ids ddlm uses."""
        definition = hashlib.sha256(self.hf.backend_tokenizer.to_str().encode("utf-8")).hexdigest()
        return short_hash({"kind": self.kind, "definition": definition, "vocab_size": self.vocab_size,
                           "mask_id": self.mask_id, "eos_id": self.eos_id, "pad_id": self.pad_id})

    @property
    def start_ids(self) -> list[int]:
        """The ids the tokenizer puts before a text (BERT's ``[CLS]``, RoBERTa's ``<s>``), if any."""
        marked = self.hf("a", add_special_tokens=True)["input_ids"]
        plain = self.hf("a", add_special_tokens=False)["input_ids"]
        for start in range(len(marked) - len(plain) + 1):
            if marked[start : start + len(plain)] == plain:
                return list(marked[:start])
        return []

    def chat_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` as one user turn in the tokenizer's chat template, ready for the reply."""
        if not getattr(self.hf, "chat_template", None):
            raise DDLMError("this model's tokenizer has no chat template; drop chat or use the model's instruct version",
                            field="chat")
        encoded = self.hf.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                              tokenize=True)
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return [int(i) for i in ids]


def find_mask_id(tokenizer: Any, mask_id: int | None = None) -> int | None:
    """The tokenizer's mask token, else ``mask_id`` (config.json's), else a token spelt like a mask; None if none."""
    vocabulary = tokenizer.get_vocab()
    candidates = (tokenizer.mask_token_id, mask_id, *(vocabulary.get(name) for name in MASK_TOKEN_NAMES))
    return next((int(i) for i in candidates if i is not None), None)


def find_pad_id(tokenizer: Any, reserved: set[int]) -> int | None:
    """The first of the pad, bos, unk and cls tokens that is not ``reserved`` (mask and end ids); None if none."""
    candidates = (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id)
    return next((int(i) for i in candidates if i is not None and i not in reserved), None)


def first_id(what: str, *candidates: int | None) -> int:
    """The first candidate id that is set."""
    for candidate in candidates:
        if candidate is not None:
            return int(candidate)
    raise DDLMError(f"the Hugging Face tokenizer has no {what}; add it to the model's tokenizer files")
