"""Shared fixtures: tiny Shakespeare is built into the package; the larger data sets live outside the repository,
in ``$DDLM_DATA_DIR`` (default ``../shared/data``), and a test that needs one says what it is and how to get it."""

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


def shared_folder(name: str, files: tuple[str, ...], what: str, how: str) -> Path:
    """``DATA_DIR/name``, holding ``files``; else the test is skipped with what they are and how to get them."""
    folder = DATA_DIR / name
    missing = [file for file in files if not (folder / file).is_file()]
    if missing:
        pytest.skip(f"needs {what}: {', '.join(missing)} not found in {folder}; to get them: {how.format(folder=folder)}"
                    f" (or set DDLM_DATA_DIR to a folder holding {name}/)")
    return folder


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
    return shared_folder(
        "gpt2", ("vocab.json", "merges.txt"), "the GPT-2 BPE tokenizer files (OpenAI, MIT licence)",
        "hf download openai-community/gpt2 vocab.json merges.txt --local-dir {folder}",
    )


@pytest.fixture(scope="session")
def tinystories_dir() -> Path:
    return shared_folder(
        "tinystories", ("train.txt", "valid.txt"),
        "an excerpt of TinyStories (Eldan & Li 2023, CDLA-Sharing-1.0 licence): about 2 MB of its training text and 0.8 MB "
        "of its validation text",
        "hf download roneneldan/TinyStories TinyStories-train.txt TinyStories-valid.txt --repo-type dataset "
        "--local-dir /tmp/ts && mkdir -p {folder} && head -c 2000000 /tmp/ts/TinyStories-train.txt > {folder}/train.txt && "
        "head -c 800000 /tmp/ts/TinyStories-valid.txt > {folder}/valid.txt",
    )
