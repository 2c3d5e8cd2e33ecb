"""Shared fixtures: the real data sets live outside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("DDLM_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def shared_file(relative: str) -> Path:
    """Path of a file in the shared data folder; skips the test where it is absent."""
    path = DATA_DIR / relative
    if not path.exists():
        pytest.skip(f"{path} not found (set DDLM_DATA_DIR to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    return shared_file("tinyshakespeare.txt")


@pytest.fixture(scope="session")
def shakespeare_text(shakespeare_path: Path) -> str:
    return shakespeare_path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def gpt2_dir() -> Path:
    return shared_file("gpt2/vocab.json").parent


@pytest.fixture(scope="session")
def tinystories_dir() -> Path:
    return shared_file("tinystories/train.txt").parent
