"""Tokenising a corpus once and caching the token stream on disk."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ddlm.errors import DDLMError
from ddlm.fileio import atomic_path

if TYPE_CHECKING:
    from ddlm.tokenizers.base import Tokenizer

FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$DDLM_CACHE_DIR`` if set, else ``~/.cache/ddlm``."""
    return Path(os.environ.get("DDLM_CACHE_DIR") or Path.home() / ".cache" / "ddlm")


@dataclass
class TokenizedCorpus:
    """A flat token stream (each document followed by eos) and the documents' start offsets."""

    tokens: np.ndarray  # uint16 or uint32, possibly memory-mapped
    doc_starts: np.ndarray  # int64, ascending, doc_starts[0] == 0 when non-empty

    def __len__(self) -> int:
        return len(self.tokens)

    def split(self, fraction: float) -> tuple[TokenizedCorpus, TokenizedCorpus]:
        """``(train, valid)``: valid is the last ``fraction`` of the token stream.

        A document cut by the split boundary continues as the first document of valid.
        """
        if not 0.0 <= fraction < 1.0:
            raise DDLMError(f"validation fraction {fraction} is out of range; use a value in [0, 1)")
        cut = len(self) - round(len(self) * fraction)
        starts = np.asarray(self.doc_starts)
        train = TokenizedCorpus(self.tokens[:cut], starts[starts < cut].copy())
        valid_starts = starts[starts > cut] - cut
        if cut < len(self):
            valid_starts = np.concatenate([np.zeros(1, dtype=np.int64), valid_starts])
        return train, TokenizedCorpus(self.tokens[cut:], valid_starts.astype(np.int64))


def tokenize_corpus(
    documents: list[str], tokenizer: Tokenizer, cache_dir: str | Path | None = None
) -> TokenizedCorpus:
    """Token stream of ``documents``, each followed by ``tokenizer.eos_id``.

    The result is cached under ``cache_dir`` (default :func:`default_cache_dir`),
    keyed by the documents and the tokenizer's fingerprint; a cache hit is
    memory-mapped and tokenises nothing.
    """
    if not documents:
        raise DDLMError("there are no documents to tokenise; give a corpus with some text")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _cache_key(documents, tokenizer)
    tokens_path = cache_dir / f"corpus-{key}.tokens.npy"
    starts_path = cache_dir / f"corpus-{key}.starts.npy"
    # The starts file is written last, so its presence means both files are complete.
    if starts_path.exists() and tokens_path.exists():
        try:
            return TokenizedCorpus(
                np.load(tokens_path, mmap_mode="r"), np.load(starts_path, mmap_mode="r")
            )
        except (OSError, ValueError):
            pass  # unreadable cache: rebuild it below

    corpus = _tokenize(documents, tokenizer)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _save_atomic(tokens_path, corpus.tokens)
        _save_atomic(starts_path, corpus.doc_starts)
    except OSError as error:
        raise DDLMError(
            f"cannot write the token cache in {cache_dir} ({error.strerror}); "
            "set DDLM_CACHE_DIR to a writable folder"
        ) from None
    return corpus


def _cache_key(documents: list[str], tokenizer: Tokenizer) -> str:
    """sha256 of the format version, the tokenizer fingerprint and the documents."""
    digest = hashlib.sha256(f"ddlm-corpus-v{FORMAT_VERSION}\0{tokenizer.fingerprint()}\0".encode())
    for document in documents:
        data = document.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _tokenize(documents: list[str], tokenizer: Tokenizer) -> TokenizedCorpus:
    dtype = np.uint16 if tokenizer.vocab_size <= 65535 else np.uint32
    pieces = [np.asarray(tokenizer.encode(d) + [tokenizer.eos_id], dtype=dtype) for d in documents]
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    starts = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(lengths)[:-1]])
    return TokenizedCorpus(np.concatenate(pieces), starts)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` as .npy via a temporary file and ``os.replace``."""
    with atomic_path(path) as temp, temp.open("wb") as file:
        np.save(file, array)
