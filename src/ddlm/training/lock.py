"""One training per run directory: an exclusive lock, held while a run writes there."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from ddlm.errors import DDLMError
from ddlm.fileio import error_reason

LOCK_FILE = ".train.lock"


class RunLock:
    """``flock`` on ``DIRECTORY/.train.lock``: the system drops it when the process ends, even after kill -9."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.handle: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self.handle is not None

    def acquire(self) -> RunLock:
        """Take the lock (again a no-op when held), or a one-line error naming the busy directory."""
        if self.handle is not None:
            return self
        try:
            handle = (self.directory / LOCK_FILE).open("a+", encoding="utf-8")
        except OSError as error:
            raise DDLMError(f"cannot write in the run directory {self.directory} ({error_reason(error)}); "
                            "choose a writable --out") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip()
            handle.close()
            process = f" (process {owner})" if owner.isdigit() else ""
            raise DDLMError(f"{self.directory} is in use by another training{process}; "
                            "wait for it to finish or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file drops the lock
            self.handle = None
