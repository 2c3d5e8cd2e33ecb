"""Atomic file writes: a crash never leaves a half-written checkpoint or model file."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ddlm.errors import DDLMError

TEMPORARY_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600 (and writers may recreate it): the usual mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted ``atomic_path`` writes left in ``directory``.

    Only safe while no one else writes there (a training holds the run directory's lock).
    """
    directory = Path(directory)
    stale = [path for path in directory.glob(f".*{TEMPORARY_SUFFIX}") if path.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def check_writable_file(path: str | Path, what: str) -> None:
    """A one-line error now, before any work, if ``path`` cannot be written (a folder, a read-only place)."""
    path = Path(path)
    if path.is_dir():
        raise DDLMError(f"{what} {path} is a directory; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise DDLMError(f"cannot write {what} {path} ({error_reason(error)}); choose a writable path") from None


def prepare_directory(path: str | Path, what: str) -> Path:
    """``path`` as an existing, writable directory (created if needed), or a one-line error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DDLMError(f"{what} {path} is a file, not a directory; choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise DDLMError(f"cannot write in {what} {path} ({error_reason(error)}); "
                        "make it writable or choose another path") from None
    return path


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def error_reason(error: BaseException) -> str:
    """The short cause of an I/O error, e.g. "File too large" (also out of safetensors' Rust error text)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    inner = re.search(r'message: "([^"]+)"|I/O error: (.+?) \(os error \d+\)', text)
    return next(group for group in inner.groups() if group) if inner else text or type(error).__name__


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
