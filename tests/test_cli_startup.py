"""``ddlm --version`` and ``ddlm --help`` answer without loading torch; --threads reaches torch; presets' sizes."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from ddlm.cli import main
from ddlm.training import load_config, prepare_training

HEAVY = ("torch", "numpy", "transformers", "gradio", "fastapi", "matplotlib")
LOADED_AFTER = """
import sys
from ddlm.launcher import main
sys.argv = ["ddlm", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("loaded:", *sorted(name for name in {heavy!r} if name in sys.modules))
"""


@pytest.mark.parametrize("argv", [["--version"], ["--help"], []], ids=["--version", "--help", "bare"])
def test_version_and_help_load_no_heavy_module(argv):
    script = LOADED_AFTER.format(heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "loaded:"


def test_the_help_says_sample_takes_bundled_names_and_hub_ids(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    line = text[text.index(" sample "):text.index(" animate ")]
    assert "bundled" in line and "Hub id" in line


@pytest.mark.parametrize("command", ["train", "sample", "eval", "animate", "serve"])
def test_every_command_that_runs_a_model_takes_threads(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--threads" in capsys.readouterr().out


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_reach_torch_and_a_bad_count_is_one_line(torch_threads, tmp_path, capsys):
    args = ["sample", "--model", str(tmp_path / "no-model"), "--device", "cpu"]  # set before the model loads (and fails)
    torch.set_num_threads(1)
    assert main([*args, "--threads", "2"]) == 2
    assert torch.get_num_threads() == 2
    assert main([*args, "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: --threads must be at least 1, got 0"


def test_presets_give_the_parameters_their_models_have(tmp_path, capsys):
    assert main(["presets"]) == 0
    printed = dict(re.fullmatch(r"(\S+) .*\[([\d,]+) parameters, vocabulary [\d,]+\]", line).groups()
                   for line in capsys.readouterr().out.splitlines())
    assert set(printed) >= {"tiny", "char-small", "char-block", "bpe-small"}
    for preset in ("tiny", "char-small", "char-block"):  # trained on the built-in corpus, as `ddlm presets` counts
        trainer = prepare_training(load_config(preset), tmp_path / preset, device="cpu", cache_dir=tmp_path / "cache",
                                   show_progress=False)
        assert int(printed[preset].replace(",", "")) == trainer.model.num_parameters()
