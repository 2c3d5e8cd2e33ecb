"""Writing Hugging Face files into a model directory without leaving half-written ones."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def save_through_staging(directory: str | Path, save: Callable[[str], object]) -> None:
    """Run ``save`` (a ``save_pretrained``) into a hidden folder inside ``directory``, then move each
    file it wrote into place with an atomic rename."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".saving-") as staging:
        save(staging)
        for item in sorted(Path(staging).iterdir()):
            os.replace(item, directory / item.name)
