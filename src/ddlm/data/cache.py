"""Tokenising a corpus once and caching the token stream on disk."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ddlm.errors import DDLMError
from ddlm.fileio import atomic_path, write_json_atomic

if TYPE_CHECKING:
    from ddlm.tokenizers.base import Tokenizer

FORMAT_VERSION = 2  # 2: tokens as raw ids (.tokens.bin), written as they are tokenised
CHUNK_BYTES = 1 << 24  # read at a time when checking a cached file


def default_cache_dir() -> Path:
    """``$DDLM_CACHE_DIR`` if set, else ``~/.cache/ddlm``."""
    return Path(os.environ.get("DDLM_CACHE_DIR") or Path.home() / ".cache" / "ddlm")


@dataclass
class TokenizedCorpus:
    """A flat token stream (each document followed by eos) and the documents' start offsets."""

    tokens: np.ndarray  # uint16 or uint32, possibly memory-mapped
    doc_starts: np.ndarray  # int64, ascending, doc_starts[0] == 0 when non-empty
    fingerprint: str | None = None  # the cache key (text and tokenizer) of the corpus this was cut from

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
        train = TokenizedCorpus(self.tokens[:cut], starts[starts < cut].copy(), self.fingerprint)
        valid_starts = starts[starts > cut] - cut
        if cut < len(self):
            valid_starts = np.concatenate([np.zeros(1, dtype=np.int64), valid_starts])
        return train, TokenizedCorpus(self.tokens[cut:], valid_starts.astype(np.int64), self.fingerprint)


def tokenize_corpus(
    documents: Iterable[str], tokenizer: Tokenizer, cache_dir: str | Path | None = None, identity: str | None = None
) -> TokenizedCorpus:
    """Token stream of ``documents``, each followed by ``tokenizer.eos_id``.

    The result is cached under ``cache_dir`` (default :func:`default_cache_dir`), keyed by the
    tokenizer's fingerprint and the documents' text, or by ``identity`` when given (a streamed
    source's name and settings: its documents are then not read at all on a cache hit). A
    cache hit is memory-mapped and tokenises nothing. The size and CRC-32 of both cache files are
    recorded when they are written and checked on every hit: a damaged cache (zeroed, truncated,
    overwritten) is rebuilt, with one line on stderr saying why. Documents are tokenised one at a time and
    written straight to disk, so the text need not fit in memory; without ``identity``,
    ``documents`` is iterated twice on a cache miss (to hash it, then to tokenise it).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = _cache_key(tokenizer, documents, identity)
    files = {"tokens": cache_dir / f"corpus-{key}.tokens.bin", "starts": cache_dir / f"corpus-{key}.starts.npy"}
    record_path = cache_dir / f"corpus-{key}.json"
    dtype = token_dtype(tokenizer)
    # The record is written last, so its presence means both files were complete.
    if record_path.exists():
        damage = _damage(record_path, files)
        if damage is None:
            return _load(files, dtype, key)
        print(f"the token cache {files['tokens']} {damage}; rebuilding it", file=sys.stderr)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _write(documents, tokenizer, dtype, files["tokens"], files["starts"])
        write_json_atomic(record_path, {name: _summary(path) for name, path in files.items()})
    except OSError as error:
        raise DDLMError(
            f"cannot write the token cache in {cache_dir} ({error.strerror or error}); "
            "set DDLM_CACHE_DIR to a writable folder"
        ) from None
    return _load(files, dtype, key)


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


def _load(files: dict[str, Path], dtype: type, key: str) -> TokenizedCorpus:
    """The cached corpus, memory-mapped."""
    return TokenizedCorpus(np.memmap(files["tokens"], dtype=dtype, mode="r"),
                           np.load(files["starts"], mmap_mode="r"), key)


def _summary(path: Path) -> dict[str, int]:
    """``{"bytes", "crc32"}`` of a file, read in chunks."""
    crc, size = 0, 0
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            crc, size = zlib.crc32(chunk, crc), size + len(chunk)
    return {"bytes": size, "crc32": crc}


def _damage(record_path: Path, files: dict[str, Path]) -> str | None:
    """What is wrong with a cached corpus (an unreadable record, a missing file, a file whose size or
    CRC-32 differs from its record), or None when both files are as they were written."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        written = {name: {"bytes": int(record[name]["bytes"]), "crc32": int(record[name]["crc32"])} for name in files}
    except (OSError, ValueError, KeyError, TypeError):
        return "has an unreadable checksum record"
    for name, path in files.items():
        try:
            actual = _summary(path)
        except OSError as error:
            return f"lost its {name} file ({error.strerror or error})"
        if actual != written[name]:
            return (f"is damaged: its {name} file is {actual['bytes']} bytes with CRC-32 {actual['crc32']:08x}, "
                    f"but {written[name]['bytes']} bytes with CRC-32 {written[name]['crc32']:08x} were written")
    return None


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` as .npy via a temporary file and ``os.replace``."""
    with atomic_path(path) as temp, temp.open("wb") as file:
        np.save(file, array)
