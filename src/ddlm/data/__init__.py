"""Corpora: reading text, tokenising it once into a cached stream, and batching it."""

from __future__ import annotations

from ddlm.data.cache import TokenizedCorpus, default_cache_dir, tokenize_corpus
from ddlm.data.loader import BatchLoader
from ddlm.data.sources import read_documents

__all__ = ["BatchLoader", "TokenizedCorpus", "default_cache_dir", "read_documents", "tokenize_corpus"]
