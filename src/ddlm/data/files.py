"""Reading local text corpora: a .txt file, a folder of .txt files, or a .jsonl file."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from ddlm.errors import DDLMError


def read_documents(path: str | Path, separator: str | None = None) -> list[str]:
    """Documents of the corpus at ``path``.

    ``path`` is a ``.jsonl`` file (one object per line with a string ``"text"``
    field; blank lines are ignored), a folder (every ``*.txt`` file under it, sorted
    by relative path, one document each) or any other file, read as one plain-text
    document. With ``separator`` (e.g. ``"<|endoftext|>"``) each text is split into
    documents on it; surrounding newlines are stripped from each piece and empty
    pieces are dropped. Whitespace-only documents are always dropped.
    """
    path = Path(path)
    if not path.exists():
        raise DDLMError(f"data path {path} does not exist; check the path to your corpus")
    if path.is_dir():
        files = sorted(path.rglob("*.txt"), key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise DDLMError(f"folder {path} contains no .txt files; point to a folder of .txt files")
        texts = [_read_text(f) for f in files]
    elif path.suffix == ".jsonl":
        texts = _read_jsonl(path)
    else:
        texts = [_read_text(path)]
    return split_documents(texts, separator, path)


def split_documents(texts: Iterable[str], separator: str | None, corpus: object) -> list[str]:
    """``texts`` cut into documents (see :func:`read_documents`); an error if none has text."""
    documents = list(iter_documents(texts, separator))
    if not documents:
        raise DDLMError(f"corpus {corpus} contains no text; add text to it or choose another path")
    return documents


def iter_documents(texts: Iterable[str], separator: str | None) -> Iterator[str]:
    """The documents of ``texts``, lazily: split on ``separator``, whitespace-only ones dropped."""
    for text in texts:
        pieces = [text] if separator is None else (piece.strip("\r\n") for piece in text.split(separator))
        yield from (piece for piece in pieces if piece.strip())


def _read_text(path: Path) -> str:
    """Contents of ``path`` decoded as strict UTF-8 (line endings are kept as they are)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DDLMError(
            f"{path} is not valid UTF-8 (bad byte at offset {error.start}); re-save it as UTF-8"
        ) from None


def _read_jsonl(path: Path) -> list[str]:
    """The ``"text"`` field of every non-blank line of the JSON-lines file ``path``."""
    texts = []
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DDLMError(
                f"line {number} of {path} is not valid JSON ({error.msg}); "
                "write one JSON object per line"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DDLMError(
                f'line {number} of {path} has no string "text" field; '
                'give every line a "text" field holding the document'
            )
        texts.append(record["text"])
    return texts
