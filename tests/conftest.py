"""Shared fixtures: tiny Shakespeare is built into the package; the larger data sets live outside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ddlm.data import builtin_text

# Nothing in the tests may reach the Hugging Face Hub: set before any test imports datasets or huggingface_hub.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("DDLM_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def shared_file(relative: str, what: str) -> Path:
    """Path of a file of the larger data sets; skips the test, saying why, where it is absent."""
    path = DATA_DIR / relative
    if not path.exists():
        pytest.skip(f"needs {what}: {path} not found (set DDLM_DATA_DIR to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    """The built-in corpus (tiny Shakespeare), which ships with the package."""
    return builtin_text("shakespeare")


@pytest.fixture(scope="session")
def shakespeare_path(tmp_path_factory, shakespeare_text: str) -> Path:
    """The built-in corpus written to a plain text file, for tests of reading files."""
    path = tmp_path_factory.mktemp("shakespeare") / "tinyshakespeare.txt"
    path.write_bytes(shakespeare_text.encode("utf-8"))
    return path


@pytest.fixture(scope="session")
def gpt2_dir() -> Path:
    return shared_file("gpt2/vocab.json", "the GPT-2 BPE tokenizer files").parent


@pytest.fixture(scope="session")
def tinystories_dir() -> Path:
    return shared_file("tinystories/train.txt", "the TinyStories excerpt").parent
