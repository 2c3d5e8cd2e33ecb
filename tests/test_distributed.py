"""Data-parallel training with real torchrun processes (gloo on the CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddlm import DiffusionPipeline
from ddlm.cli import main
from ddlm.training.checkpoint import CHECKPOINT_FILE


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare_text) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "corpus.txt"
    path.write_text(shakespeare_text[:30000], encoding="utf-8")
    return path


def torchrun(corpus: Path, out: Path, *extra: str) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "ddlm.cli", "train", "--data", str(corpus), "--out", str(out), "--no-progress",
        "--cache-dir", str(out.parent / "cache"), *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


SETTINGS = ["optim.max_steps=6", "log.eval_every=0", "log.save_every=0", "optim.precision=fp32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus) -> tuple[Path, Path]:
    """The same two-process run, straight through and stopped at step 3 then resumed."""
    root = tmp_path_factory.mktemp("runs")
    torchrun(corpus, root / "straight", "--preset", "tiny", *SETTINGS)
    torchrun(corpus, root / "split", "--preset", "tiny", *SETTINGS, "--stop-after", "3")
    torchrun(corpus, root / "split", "--resume")
    return root / "straight", root / "split"


def test_two_processes_resume_exactly(runs):
    straight, split = (load_file(str(run / CHECKPOINT_FILE)) for run in runs)
    for name, tensor in straight.items():
        if name.startswith(("model/", "ema/", "optim/")):
            assert torch.equal(tensor, split[name]), f"{name} differs after a two-process resume"
    assert {name for name in straight if name.startswith("rng/noise/")} == {"rng/noise/0", "rng/noise/1"}
    assert not torch.equal(straight["rng/noise/0"], straight["rng/noise/1"])  # ranks draw different masks


def test_two_processes_export_a_model_and_count_both_ranks_tokens(runs):
    straight, _ = runs
    pipe = DiffusionPipeline.from_pretrained(straight, device="cpu")
    assert pipe.summary["steps"] == 6
    assert pipe.summary["tokens"] == 6 * 2 * 8 * 32  # steps x ranks x batch x context (tiny preset)
    assert len(pipe.generate(length=8, steps=4, seed=0)) == 1


def test_resuming_with_another_number_of_processes_is_refused(runs, capsys):
    straight, _ = runs
    assert main(["train", "--resume", "--out", str(straight), "--no-progress"]) == 2
    assert "same number of processes" in capsys.readouterr().err
