"""Tokenising a corpus once and caching the token stream on disk."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ddlm.errors import DDLMError
from ddlm.fileio import atomic_path

if TYPE_CHECKING:
    from ddlm.tokenizers.base import Tokenizer

FORMAT_VERSION = 2  # 2: tokens as raw ids (.tokens.bin), written as they are tokenised


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
    documents: Iterable[str], tokenizer: Tokenizer, cache_dir: str | Path | None = None, identity: str | None = None
) -> TokenizedCorpus:
    """Token stream of ``documents``, each followed by ``tokenizer.eos_id``.

    The result is cached under ``cache_dir`` (default :func:`default_cache_dir`), keyed by the
    tokenizer's fingerprint and the documents' text, or by ``identity`` when given (a streamed
    source's name and settings: its documents are then not read at all on a cache hit). A
    cache hit is memory-mapped and tokenises nothing. Documents are tokenised one at a time and
    written straight to disk, so the text need not fit in memory; without ``identity``,
    ``documents`` is iterated twice on a cache miss (to hash it, then to tokenise it).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _cache_key(tokenizer, documents, identity)
    tokens_path = cache_dir / f"corpus-{key}.tokens.bin"
    starts_path = cache_dir / f"corpus-{key}.starts.npy"
    dtype = token_dtype(tokenizer)
    # The starts file is written last, so its presence means both files are complete.
    if starts_path.exists() and tokens_path.exists():
        try:
            return _load(tokens_path, starts_path, dtype)
        except (OSError, ValueError):
            pass  # unreadable cache: rebuild it below
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _write(documents, tokenizer, dtype, tokens_path, starts_path)
    except OSError as error:
        raise DDLMError(
            f"cannot write the token cache in {cache_dir} ({error.strerror or error}); "
            "set DDLM_CACHE_DIR to a writable folder"
        ) from None
    return _load(tokens_path, starts_path, dtype)


def token_dtype(tokenizer: Tokenizer) -> type[np.unsignedinteger]:
    """The smallest unsigned integer type holding every id of ``tokenizer``."""
    return np.uint16 if tokenizer.vocab_size <= 65535 else np.uint32


def _cache_key(tokenizer: Tokenizer, documents: Iterable[str], identity: str | None) -> str:
    """sha256 of the format version, the tokenizer fingerprint and the identity or the documents."""
    digest = hashlib.sha256(f"ddlm-corpus-v{FORMAT_VERSION}\0{tokenizer.fingerprint()}\0".encode())
    if identity is not None:
        digest.update(b"identity\0" + identity.encode("utf-8"))
        return digest.hexdigest()
    digest.update(b"text\0")
    for document in documents:
        data = document.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _write(
    documents: Iterable[str], tokenizer: Tokenizer, dtype: type, tokens_path: Path, starts_path: Path
) -> None:
    """Tokenise ``documents`` one at a time into ``tokens_path`` (raw ids), then their starts."""
    lengths = []
    with atomic_path(tokens_path) as temp, temp.open("wb") as file:
        for document in documents:
            ids = np.asarray(tokenizer.encode(document) + [tokenizer.eos_id], dtype=dtype)
            ids.tofile(file)
            lengths.append(len(ids))
        if not lengths:
            raise DDLMError("there are no documents to tokenise; give a corpus with some text")
    starts = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(lengths[:-1], dtype=np.int64)])
    _save_atomic(starts_path, starts)


def _load(tokens_path: Path, starts_path: Path, dtype: type) -> TokenizedCorpus:
    """The cached corpus, memory-mapped; ValueError if the two files do not fit together."""
    tokens = np.memmap(tokens_path, dtype=dtype, mode="r")
    starts = np.load(starts_path, mmap_mode="r")
    if len(starts) == 0 or starts[0] != 0 or starts[-1] >= len(tokens):
        raise ValueError(f"{starts_path} does not fit {tokens_path}")
    return TokenizedCorpus(tokens, starts)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` as .npy via a temporary file and ``os.replace``."""
    with atomic_path(path) as temp, temp.open("wb") as file:
        np.save(file, array)
