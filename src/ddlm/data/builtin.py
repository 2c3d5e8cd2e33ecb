"""The corpora that ship inside the package (see ``corpora/README.md`` for their provenance)."""

from __future__ import annotations

import gzip
from importlib import resources

from ddlm.errors import DDLMError

BUILTIN_CORPORA = {"shakespeare": "tinyshakespeare.txt.gz"}  # name -> gzip file in ddlm/data/corpora
DEFAULT_CORPUS = "shakespeare"
BUILTIN_HELD_OUT_FRACTION = 0.1  # what ``eval --data NAME`` scores: the tail a default training run holds out


def builtin_text(name: str) -> str:
    """The text of the built-in corpus ``name``."""
    if name not in BUILTIN_CORPORA:
        raise DDLMError(f"no built-in corpus {name!r}; choose one of {', '.join(BUILTIN_CORPORA)}")
    packed = resources.files("ddlm.data").joinpath("corpora", BUILTIN_CORPORA[name]).read_bytes()
    return gzip.decompress(packed).decode("utf-8")
