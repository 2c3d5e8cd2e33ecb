"""The ddlm command: a real run end to end, and every bad input as one line with exit code 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from ddlm import DiffusionPipeline
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


@pytest.fixture(scope="module")
def trained_ar(trained) -> Path:
    """The autoregressive baseline on the same excerpt: a judge for generative perplexity."""
    root = trained.parent
    out = root / "run-ar"
    code = main(["train", "--data", str(root / "corpus.txt"), "--preset", "tiny", "--out", str(out), "--no-progress",
                 "--cache-dir", str(root / "cache"), "optim.max_steps=10", "process.name=ar"])
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


def test_sample_prints_every_batch_in_order_and_the_batch_size_changes_nothing(trained, capsys):
    args = ["sample", "--model", str(trained), "--length", "8", "--steps", "4", "--seed", "5", "-n", "3",
            "--prompt", "A", "--prompt", "B", "--format", "jsonl"]
    code, whole, _ = run_cli(args, capsys)
    code_batched, batched, _ = run_cli([*args, "--batch-size", "2"], capsys)
    assert code == code_batched == 0 and whole == batched
    lines = [json.loads(line) for line in batched.splitlines()]
    assert [line["index"] for line in lines] == list(range(6))
    assert [line["prompt"] for line in lines] == ["A"] * 3 + ["B"] * 3
    assert all(line["seed"] == 5 for line in lines)


def test_sample_without_a_seed_reports_the_seed_it_drew(trained, capsys):
    code, out, err = run_cli(["sample", "--model", str(trained), "--length", "12", "--steps", "4"], capsys)
    seed = int(err.split("--seed ")[1].split()[0])
    assert code == 0 and run_cli(["sample", "--model", str(trained), "--length", "12", "--steps", "4", "--seed",
                                  str(seed)], capsys)[1] == out


def test_live_without_a_terminal_prints_plain_text(trained, capsys):
    args = ["sample", "--model", str(trained), "--length", "12", "--steps", "4", "--seed", "1", "-n", "2"]
    assert run_cli([*args, "--live"], capsys)[1] == run_cli(args, capsys)[1]


@pytest.mark.parametrize(("extra", "message"), [
    (["--temperature", "inf"], "temperature must be a finite number"),
    (["--temperature", "nan"], "temperature must be a finite number"),
    (["--policy", "threshold", "--threshold", "2"], "threshold must be in (0, 1]"),
    (["--seed", "-1"], "seed must be in [0, 2**63)"),
    (["--steps", "0"], "steps must be at least 1"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--batch-size", "0"], "batch_size must be at least 1"),
    (["--infill", "[MASK*999999999999]"], "the infill template is at least 999999999999 tokens"),
    (["--method", "euler"], "the masked sampler has no option method"),
])
def test_bad_sampler_options_are_one_line_errors(trained, capsys, extra, message):
    code, out, err = run_cli(["sample", "--model", str(trained), *extra], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and out == ""


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
        "missing model directory": (["sample", "--model", str(tmp_path / "absent")], "does not exist"),
        "eval on a missing data file": (["eval", "--model", str(trained), "--data", str(tmp_path / "nope.txt")],
                                        "does not exist"),
        "corrupt model directory": (["sample", "--model", str(corrupt)], "not valid JSON"),
    }


CASES = [
    "missing data file", "empty data file", "invalid UTF-8", "corpus shorter than a row", "unknown override",
    "unknown preset", "resume with nothing saved", "prompt longer than the context",
    "character outside the vocabulary", "zero steps", "length beyond the context", "missing model directory",
    "eval on a missing data file", "corrupt model directory",
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


def test_infill_keeps_the_template_text(trained, capsys):
    code, out, _ = run_cli(["sample", "--model", str(trained), "--infill", "ROMEO:[MASK*8]\nJULIET:[MASK*4].",
                            "--steps", "6", "--seed", "1", "--min-length", "12", "--format", "jsonl"], capsys)
    assert code == 0
    text = json.loads(out)["text"]
    assert text.startswith("ROMEO:") and text[14:22] == "\nJULIET:" and text.endswith(".") and len(text) == 27


@pytest.mark.parametrize("policy", ["first-hitting", "threshold", "margin"])
def test_policies_and_per_sample_prompts_from_the_command_line(trained, capsys, policy):
    args = ["sample", "--model", str(trained), "--prompt", "ROMEO:", "--prompt", "First Citizen:", "-n", "2",
            "--length", "12", "--steps", "6", "--policy", policy, "--seed", "0", "--format", "jsonl"]
    if policy != "first-hitting":
        args += ["--block-length", "4", "--prefix-cache"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["prompt"] for line in lines] == ["ROMEO:", "ROMEO:", "First Citizen:", "First Citizen:"]
    assert all(line["text"].startswith(line["prompt"]) for line in lines)
    assert all(len(line["text"]) <= len(line["prompt"]) + 12 for line in lines)  # shorter after an end-of-text


def test_entropy_bound_and_dual_cache_from_the_command_line(trained, capsys):
    args = ["sample", "--model", str(trained), "--prompt", "ROMEO:", "--length", "12", "--steps", "12", "--seed", "0",
            "--policy", "random", "--entropy-bound", "1000", "--block-length", "4", "--dual-cache", "--format", "jsonl"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    options = {"policy": "random", "entropy_bound": 1000.0, "block_length": 4, "dual_cache": True}
    pipe = DiffusionPipeline.from_pretrained(trained)
    assert json.loads(out)["text"] == pipe.generate("ROMEO:", length=12, steps=12, seed=0, **options)[0]
    assert pipe.sample("ROMEO:", length=12, steps=12, seed=0, **options).model_calls == 3  # a block per call


@pytest.mark.parametrize(("extra", "message"), [
    (["--entropy-bound", "2"], "needs a ranked policy"),
    (["--dual-cache"], "set block_length"),
    (["--infill", "ROMEO: [MASK"], "bad infill template"),
    (["--length", "10", "--block-length", "3"], "does not divide"),
    (["--infill", "ROMEO:[MASK]", "--prompt", "x"], "drop the prompt"),
])
def test_bad_sampling_options_are_one_line(trained, capsys, extra, message):
    code, _, err = run_cli(["sample", "--model", str(trained), "--steps", "4", *extra], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_eval_prints_a_table_and_writes_every_figure(trained, trained_ar, tmp_path, capsys):
    report = tmp_path / "eval.json"
    code, out, err = run_cli([
        "eval", "--model", str(trained), "--model", str(trained_ar), "--data", str(trained.parent / "corpus.txt"),
        "--judge", str(trained_ar), "--json", str(report), "--max-sequences", "4", "--draws", "4", "-n", "3",
        "--steps", "8", "--policy", "confidence", "--no-progress"], capsys)
    assert code == 0, err
    assert len([line for line in out.splitlines() if line.startswith("| ")]) == 3  # header + 2 models
    models = json.loads(report.read_text())["models"]
    masked, ar = models[str(trained)], models[str(trained_ar)]
    likelihood = masked["likelihood"]
    assert likelihood["sequences"] == 4 and likelihood["draws"] == 4 and not likelihood["exact"]
    assert likelihood["bits_per_byte"] == pytest.approx(likelihood["bits_per_token"])  # ASCII: one byte per character
    assert ar["likelihood"]["exact"] and ar["likelihood"]["draws"] == 1
    samples = masked["samples"]
    assert samples["generative_perplexity"] == pytest.approx(math.exp(samples["judge_nll"]))
    assert masked["settings"]["sampler"]["steps"] == 8 and masked["settings"]["sampler"]["policy"] == "confidence"
    assert "policy" not in ar["samples"]["sampler"]  # a masked-diffusion option does not apply to the AR model
    assert 0 < samples["distinct_1"] <= 1 and samples["model_calls"] <= 8


def test_eval_left_to_right_adds_a_column_and_the_exact_figures(trained, trained_ar, tmp_path, capsys):
    report = tmp_path / "eval.json"
    code, out, err = run_cli([
        "eval", "--model", str(trained), "--model", str(trained_ar), "--data", str(trained.parent / "corpus.txt"),
        "--metrics", "likelihood", "left-to-right", "--json", str(report), "--max-sequences", "2", "--draws", "2",
        "--no-progress"], capsys)
    assert code == 0, err
    assert "left-to-right NLL" in out.splitlines()[0]
    table = out.strip().splitlines()
    assert "gen. PPL" not in table[0] and len({line.count("|") for line in table}) == 1  # no empty sample columns
    models = json.loads(report.read_text())["models"]
    masked, ar = models[str(trained)], models[str(trained_ar)]
    assert masked["left_to_right"]["exact"] and masked["left_to_right"]["sequences"] == 2
    assert masked["left_to_right"]["tokens"] == masked["likelihood"]["tokens"]
    assert ar["left_to_right"]["nats_per_token"] == pytest.approx(ar["likelihood"]["nats_per_token"], rel=1e-5)


def test_eval_left_to_right_refuses_a_score_entropy_model_before_any_work(trained, tmp_path, capsys):
    sedd = tmp_path / "sedd"
    assert main(["train", "--data", str(trained.parent / "corpus.txt"), "--preset", "tiny", "--out", str(sedd),
                 "--no-progress", "--cache-dir", str(trained.parent / "cache"), "optim.max_steps=2",
                 "process.name=sedd-absorb"]) == 0
    capsys.readouterr()
    code, out, err = run_cli(["eval", "--model", str(trained), "--model", str(sedd), "--data",
                              str(trained.parent / "corpus.txt"), "--metrics", "left-to-right", "--no-progress"], capsys)
    assert code == 2 and out == "" and "left-to-right likelihood is for autoregressive, masked and block" in err
    assert len(err.strip().splitlines()) == 1


def test_eval_needs_data_for_the_likelihood(trained, capsys):
    code, _, err = run_cli(["eval", "--model", str(trained), "--metrics", "likelihood"], capsys)
    assert code == 2 and "--data" in err


@pytest.mark.parametrize(("extra", "flag"), [(["--method", "euler"], "--method"), (["--length", "99999"], "--length"),
                                             (["--no-cache", "--dual-cache"], "--dual-cache")])
def test_an_error_names_the_flag_that_sets_its_field(trained, capsys, extra, flag):
    code, out, err = run_cli(["sample", "--model", str(trained), *extra], capsys)
    assert code == 2 and err.strip().endswith(f"({flag})")
