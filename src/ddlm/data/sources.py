"""Where a corpus comes from: :func:`resolve_source` turns what the user names (``--data``) into a
:class:`TextSource`: a local file or folder, a built-in corpus, or a Hugging Face data set."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ddlm.data import huggingface
from ddlm.data.builtin import BUILTIN_CORPORA, BUILTIN_HELD_OUT_FRACTION, builtin_text
from ddlm.data.cache import TokenizedCorpus, tokenize_corpus
from ddlm.data.files import read_documents, split_documents
from ddlm.data.huggingface import HFSelection
from ddlm.errors import DDLMError

if TYPE_CHECKING:
    from ddlm.tokenizers.base import Tokenizer

HF_PREFIX = "hf:"


@dataclass(frozen=True)
class TextSource:
    """A corpus named by the user, resolved.

    ``label`` is what a run records and messages show: a built-in name, an absolute path or
    ``hf:NAME``. ``read()`` returns the documents: a list for text files and built-in corpora,
    read at once; for data sets, an iterable that reads the rows again on each pass (streamed
    from the Hub, or from the memory-mapped files of a saved data set). ``identity`` is set
    for streamed sources, whose text is not hashed: it keys the token cache instead.
    """

    label: str
    kind: str  # "builtin", "files", "saved-dataset" or "hf"
    read: Callable[[], Iterable[str]]
    identity: str | None = None


def resolve_source(data: str | Path, separator: str | None = None, hf: HFSelection | None = None) -> TextSource:
    """The source ``data`` names: ``hf:NAME`` (a Hugging Face data set, streamed), an existing
    path (a .txt file, a folder of .txt files, a .jsonl file or a folder written by
    ``save_to_disk``) or a built-in corpus name (``BUILTIN_CORPORA``); a local path wins over a
    built-in name. ``hf`` picks the configuration, split and text column of data sets."""
    hf = hf or HFSelection()
    text = str(data)
    if text.startswith(HF_PREFIX):
        name = text[len(HF_PREFIX):]
        if not name:
            raise DDLMError("hf: names no data set; write e.g. hf:roneneldan/TinyStories")
        documents = huggingface.HubDocuments(name, hf, separator)
        identity = json.dumps(["hf", name, hf.config, hf.split, hf.field, separator])
        return TextSource(text, "hf", lambda: documents, identity)
    path = Path(data)
    if path.exists():
        label = str(path.resolve())
        if huggingface.is_saved_dataset(path):
            return TextSource(label, "saved-dataset", lambda: huggingface.saved_documents(path, hf, separator))
        return TextSource(label, "files", lambda: read_documents(path, separator))
    if text in BUILTIN_CORPORA:
        return TextSource(text, "builtin", lambda: split_documents([builtin_text(text)], separator, text))
    raise DDLMError(
        f"data path {path} does not exist; check the path to your corpus, or name a built-in "
        f"corpus ({', '.join(BUILTIN_CORPORA)}) or a Hugging Face data set (hf:NAME)"
    )


def tokenize_source(
    source: TextSource, tokenizer: Tokenizer, cache_dir: str | Path | None = None, documents: Iterable[str] | None = None
) -> TokenizedCorpus:
    """The cached token stream of ``source``; pass ``documents`` where its text was already read."""
    return tokenize_corpus(source.read() if documents is None else documents, tokenizer, cache_dir, source.identity)


def held_out_corpus(source: TextSource, tokenizer: Tokenizer, cache_dir: str | Path | None = None) -> TokenizedCorpus:
    """The text to evaluate on: a built-in corpus's last ``BUILTIN_HELD_OUT_FRACTION`` of tokens,
    cut where a default training run cuts it (``TokenizedCorpus.split``); any other source whole."""
    corpus = tokenize_source(source, tokenizer, cache_dir)
    return corpus.split(BUILTIN_HELD_OUT_FRACTION)[1] if source.kind == "builtin" else corpus
