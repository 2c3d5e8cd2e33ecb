"""Corpora: finding and reading text, tokenising it once into a cached stream, and batching it."""

from __future__ import annotations

from ddlm.data.builtin import BUILTIN_CORPORA, BUILTIN_HELD_OUT_FRACTION, DEFAULT_CORPUS, builtin_text
from ddlm.data.cache import TokenizedCorpus, default_cache_dir, tokenize_corpus
from ddlm.data.files import read_documents
from ddlm.data.huggingface import HFSelection
from ddlm.data.loader import BatchLoader
from ddlm.data.sources import TextSource, held_out_corpus, resolve_source, tokenize_source

__all__ = [
    "BUILTIN_CORPORA",
    "BUILTIN_HELD_OUT_FRACTION",
    "DEFAULT_CORPUS",
    "BatchLoader",
    "HFSelection",
    "TextSource",
    "TokenizedCorpus",
    "builtin_text",
    "default_cache_dir",
    "held_out_corpus",
    "read_documents",
    "resolve_source",
    "tokenize_corpus",
    "tokenize_source",
]
