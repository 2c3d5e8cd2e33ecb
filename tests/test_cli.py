"""The ddlm command: a real run end to end, and every bad input as one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ddlm.cli import main, parse_duration


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare_path) -> Path:
    """A tiny model trained by the CLI on an excerpt of tiny Shakespeare."""
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.txt"
    corpus.write_text(shakespeare_path.read_text(encoding="utf-8")[:20000], encoding="utf-8")
    out = root / "run"
    code = main(["train", "--data", str(corpus), "--preset", "tiny", "--out", str(out), "--no-progress",
                 "--cache-dir", str(root / "cache"), "optim.max_steps=10"])
    assert code == 0
    return out


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sample_in_a_fresh_process_prints_text_with_the_prompt(trained):
    result = subprocess.run(
        [sys.executable, "-m", "ddlm.cli", "sample", "--model", str(trained), "--prompt", "ROMEO:",
         "--length", "20", "--steps", "8", "-n", "2", "--seed", "0", "--format", "jsonl"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["index"] for line in lines] == [0, 1]
    assert all(line["text"].startswith("ROMEO:") for line in lines)


def test_same_seed_same_text(trained, capsys):
    args = ["sample", "--model", str(trained), "--length", "16", "--steps", "4", "--seed", "3"]
    assert run_cli(args, capsys)[1] == run_cli(args, capsys)[1]


def bad_inputs(tmp_path: Path, trained: Path) -> dict[str, tuple[list[str], str]]:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 ".encode("latin-1") * 100)
    short = tmp_path / "short.txt"
    short.write_text("too short")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{ not json")
    model = ["sample", "--model", str(trained)]
    train = ["train", "--preset", "tiny", "--out", str(tmp_path / "out"), "--no-progress"]
    return {
        "missing data file": (train + ["--data", str(tmp_path / "nope.txt")], "does not exist"),
        "empty data file": (train + ["--data", str(empty)], "contains no text"),
        "invalid UTF-8": (train + ["--data", str(latin1)], "UTF-8"),
        "corpus shorter than a row": (train + ["--data", str(short)], "fewer than one row"),
        "unknown override": (train + ["--data", str(short), "optim.learning_rate=1"], "unknown config key"),
        "unknown preset": (["train", "--preset", "huge", "--out", str(tmp_path), "--data", str(short)], "unknown preset"),
        "resume with nothing saved": (["train", "--resume", "--out", str(tmp_path / "none")], "nothing to resume"),
        "prompt longer than the context": (model + ["--prompt", "x" * 40], "shorten the prompt"),
        "character outside the vocabulary": (model + ["--prompt", "snow \u2603"], "outside the character vocabulary"),
        "zero steps": (model + ["--steps", "0"], "steps must be at least 1"),
        "length beyond the context": (model + ["--length", "1000"], "exceed the model's context"),
        "missing model directory": (["sample", "--model", str(tmp_path / "absent")], "not found"),
        "corrupt model directory": (["sample", "--model", str(corrupt)], "not valid JSON"),
    }


CASES = [
    "missing data file", "empty data file", "invalid UTF-8", "corpus shorter than a row", "unknown override",
    "unknown preset", "resume with nothing saved", "prompt longer than the context",
    "character outside the vocabulary", "zero steps", "length beyond the context", "missing model directory",
    "corrupt model directory",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_code_2(case, tmp_path, trained, capsys):
    args, expected = bad_inputs(tmp_path, trained)[case]
    code, out, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]
    assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path, trained, capsys):
    code, _, err = run_cli(["sample", "--model", str(trained), "--steps", "0", "--debug"], capsys)
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize("text, seconds", [("600", 600), ("90s", 90), ("10m", 600), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_an_option_the_sampler_does_not_take_is_one_line(trained, capsys):
    code, _, err = run_cli(["sample", "--model", str(trained), "--method", "euler"], capsys)
    assert code == 2 and "has no option method" in err and len(err.strip().splitlines()) == 1
