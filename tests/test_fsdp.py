"""Sharded training (optim.parallel=fsdp, FSDP2) with real torchrun processes (gloo on the CPU)."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddlm import DiffusionPipeline
from ddlm.cli import main
from ddlm.training.checkpoint import CHECKPOINT_FILE, SHARDS_KEY, load_checkpoint
from ddlm.training.sharding import SHARDS_DIR
from tests.test_finetune import ddlm_models, finetune_args, hf_model, write_hf_pairs  # noqa: F401 (a fixture)
from tests.test_hf_adaptation import TRAIN as ADAPTATION, causal_lm
from tests.test_hf_backend import TEXT

# A deterministic loss (autoregressive, no dropout) and a constant learning rate: a run's losses depend
# only on its weights and its global batches, and a run's length does not change its schedule.
SETTINGS = ["--preset", "tiny", "optim.precision=fp32", "log.eval_every=0", "log.save_every=0", "log.log_every=1",
            "process.name=ar", "optim.warmup_steps=0", "optim.min_lr_ratio=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shakespeare_text) -> Path:
    path = tmp_path_factory.mktemp("fsdp") / "corpus.txt"
    path.write_text(shakespeare_text[:30000], encoding="utf-8")
    return path


def torchrun_command(*arguments: str, processes: int = 2) -> list[str]:
    """`torchrun --nproc_per_node N -m ddlm.cli ARGUMENTS`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", "ddlm.cli", *arguments]


def command(corpus: Path, out: Path, *extra: str, processes: int = 2) -> list[str]:
    """`torchrun --nproc_per_node N -m ddlm.cli train ...` (``extra`` after the data and output flags)."""
    return torchrun_command("train", "--data", str(corpus), "--out", str(out), "--no-progress",
                            "--cache-dir", str(out.parent / "cache"), *extra, processes=processes)


def launch(arguments: list[str]) -> None:
    """Run a torchrun command line to its successful end."""
    result = subprocess.run(arguments, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]


def torchrun(corpus: Path, out: Path, *extra: str) -> None:
    launch(command(corpus, out, *extra))


def alone(corpus: Path, out: Path, *extra: str) -> None:
    """The same command in this one process, without torchrun."""
    assert main(["train", "--data", str(corpus), "--out", str(out), "--no-progress",
                 "--cache-dir", str(out.parent / "cache"), *extra]) == 0


def losses(out: Path) -> dict[int, float]:
    """The training NELBO logged at each step."""
    with open(out / "log.csv", encoding="utf-8") as handle:
        return {int(row["step"]): float(row["train_nelbo"]) for row in csv.DictReader(handle) if row["train_nelbo"]}


def assert_same_run(run: Path, reference: Path, exact: bool = False) -> None:
    """Equal loss trajectories and exported weights, bit for bit or to float tolerance."""
    assert losses(run) == pytest.approx(losses(reference), abs=0 if exact else 2e-4)  # logged to 4 decimals
    ours, theirs = load_file(str(run / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        if exact:
            assert torch.equal(tensor, theirs[name]), name
        else:
            torch.testing.assert_close(tensor, theirs[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus) -> dict[str, Path]:
    """Six steps of a global batch of 8 rows: two sharded processes of 4 rows, one of 8; and two sharded
    processes stopped at step 3, continued by two processes (and, in a test, by one alone)."""
    root = tmp_path_factory.mktemp("runs")
    sharded = [*SETTINGS, "optim.max_steps=6", "optim.batch_size=4", "optim.parallel=fsdp"]
    torchrun(corpus, root / "sharded", *sharded)
    alone(corpus, root / "alone", *SETTINGS, "optim.max_steps=6", "optim.batch_size=8")
    torchrun(corpus, root / "two_then_one", *sharded, "--stop-after", "3")
    shutil.copytree(root / "two_then_one", root / "two_then_two")
    torchrun(corpus, root / "two_then_two", "--resume")
    return {name: root / name for name in ("sharded", "alone", "two_then_one", "two_then_two")}


def test_two_sharded_processes_train_as_one_process_with_the_same_global_batch(runs):
    assert sorted(losses(runs["sharded"])) == list(range(1, 7))
    assert_same_run(runs["sharded"], runs["alone"])
    checkpoint = load_checkpoint(runs["sharded"] / CHECKPOINT_FILE)
    shards = runs["sharded"] / SHARDS_DIR / checkpoint[SHARDS_KEY]
    assert "model" not in checkpoint or not checkpoint["model"]  # the weights are in the shards
    assert sorted(path.name for path in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]


def test_a_stopped_sharded_run_resumes_exactly(runs):
    assert_same_run(runs["two_then_two"], runs["sharded"], exact=True)


def test_a_sharded_checkpoint_resumes_in_one_process(runs, capsys):
    out = runs["two_then_one"]
    assert max(losses(out)) == 3
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 2  # fsdp needs torchrun
    assert "optim.parallel=ddp" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(out), "--no-progress", "optim.parallel=ddp",
                 "optim.grad_accum=2"]) == 0
    assert_same_run(out, runs["alone"])
    assert not (out / SHARDS_DIR).exists()  # replaced by the one-process checkpoint


def test_sharded_training_outside_torchrun_or_an_unknown_mode_is_a_one_line_error(tmp_path, corpus, capsys):
    for mode, fix in (("fsdp", "torchrun --nproc_per_node"), ("zero3", "use ddp (the default) or fsdp")):
        assert main(["train", "--data", str(corpus), "--out", str(tmp_path / mode), *SETTINGS,
                     f"optim.parallel={mode}"]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and fix in error[0]


def wait_for_step(out: Path, process: subprocess.Popen, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (out / "log.csv").exists() or max(losses(out), default=0) < step:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run logged no step in time"
        time.sleep(0.05)


@pytest.mark.slow  # three torchrun jobs
def test_sigterm_then_resume_continues_a_sharded_run_exactly(tmp_path, corpus):
    """SIGTERM to torchrun (as a job scheduler sends it) during masked-diffusion training, then --resume: the
    same losses and weights, bit for bit, as the run straight through (its noise, data, moments, EMA)."""
    settings = [*SETTINGS, "process.name=masked", "optim.batch_size=4", "optim.parallel=fsdp"]
    split, straight = tmp_path / "split", tmp_path / "straight"
    process = subprocess.Popen(command(corpus, split, *settings, "optim.max_steps=100000"), env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_step(split, process, 2)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert "stopped by SIGTERM at step" in err, err[-3000:]
    stopped = int(load_checkpoint(split / CHECKPOINT_FILE)["train"]["step"])
    torchrun(corpus, split, "--resume", f"optim.max_steps={stopped + 3}")
    torchrun(corpus, straight, *settings, f"optim.max_steps={stopped + 3}")
    assert sorted(losses(split)) == list(range(1, stopped + 4))
    assert_same_run(split, straight, exact=True)


# ----- fine-tuning and adaptation under FSDP -----

# Fine-tuning's autoregressive loss is deterministic without dropout; a constant learning rate.
FINETUNE = ["model.dropout=0", "optim.precision=fp32", "optim.min_lr_ratio=1", "log.log_every=1", "log.save_every=0"]


@pytest.fixture(scope="module", params=["full", "lora"])
def finetuned(request, tmp_path_factory, ddlm_models) -> tuple[Path, Path]:  # noqa: F811
    """Three steps of `ddlm finetune` of the tiny autoregressive model with a global batch of 8 rows: two sharded
    processes of 4 rows, and one process of 8 (full fine-tuning, or LoRA adapters merged into the export)."""
    root = tmp_path_factory.mktemp(f"finetune-{request.param}")
    lora = ["--lora-rank", "4"] if request.param == "lora" else []
    sharded, alone = root / "sharded", root / "alone"
    launch(torchrun_command(*finetune_args(ddlm_models, sharded, *FINETUNE, *lora, "optim.parallel=fsdp", model="ar")))
    assert main(finetune_args(ddlm_models, alone, *FINETUNE, *lora, "optim.batch_size=8", model="ar")) == 0
    return sharded, alone


def test_sharded_fine_tuning_matches_one_process_with_the_same_global_batch(finetuned):
    sharded, alone = finetuned
    assert sorted(losses(sharded)) == [1, 2, 3]
    assert_same_run(sharded, alone)


def adaptation(root: Path) -> list[str]:
    """The settings of four steps of block-diffusion adaptation of a tiny GPT-2 (``--init``) made in ``root``."""
    source = root / "gpt2"
    if not source.is_dir():
        causal_lm("gpt2", source)
    return ["--init", str(source), "process.name=block", "process.block_size=4", *ADAPTATION, "optim.max_steps=4",
            "optim.batch_size=2", "log.log_every=1", "log.save_every=0"]


@pytest.fixture(scope="module")
def adapted(tmp_path_factory) -> dict[str, Path]:
    """The adaptation on two sharded processes, straight through and stopped at step 2 then resumed."""
    root = tmp_path_factory.mktemp("adapted")
    words = root / "words.txt"
    words.write_text(TEXT, encoding="utf-8")
    torchrun(words, root / "straight", *adaptation(root), "optim.parallel=fsdp")
    torchrun(words, root / "split", *adaptation(root), "optim.parallel=fsdp", "--stop-after", "2")
    torchrun(words, root / "split", "--resume")
    return {"root": root, "words": words, "straight": root / "straight", "split": root / "split"}


def test_a_sharded_adaptation_of_a_hugging_face_network_resumes_exactly(adapted):
    assert sorted(losses(adapted["split"])) == [1, 2, 3, 4]
    assert (adapted["split"] / SHARDS_DIR).is_dir()  # its checkpoint went through DCP
    assert_same_run(adapted["split"], adapted["straight"], exact=True)


def test_a_sharded_adaptation_exports_the_transformers_directory_of_one_process(adapted):
    sharded, reference = adapted["straight"], adapted["root"] / "alone"
    alone(adapted["words"], reference, *adaptation(adapted["root"]))
    files = {path.name for path in reference.iterdir()}
    assert {path.name for path in sharded.iterdir()} - {SHARDS_DIR} == files
    assert (sharded / "config.json").read_text() == (reference / "config.json").read_text()
    ours, theirs = load_file(str(sharded / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert {name: tensor.shape for name, tensor in ours.items()} == {name: tensor.shape for name, tensor in theirs.items()}
    pipe = DiffusionPipeline.from_pretrained(sharded, device="cpu")
    assert (pipe.process.name, pipe.process.block_size) == ("block", 4)
    assert pipe.summary["steps"] == 4


def test_a_hugging_face_masked_lm_fine_tunes_sharded(tmp_path):
    """A tiny BERT (its head sharing the embeddings' weight) fine-tuned on two sharded processes, then loaded."""
    model, out = hf_model("bert", tmp_path / "bert"), tmp_path / "out"
    launch(torchrun_command("finetune", "--model", str(model), "--data", str(write_hf_pairs(tmp_path / "pairs.jsonl")),
                            "--out", str(out), "--no-progress", "--max-steps", "2", "optim.batch_size=2",
                            "optim.parallel=fsdp"))
    before, after = (DiffusionPipeline.from_pretrained(path, device="cpu").model.state_dict() for path in (model, out))
    assert before.keys() == after.keys()
    assert any(not torch.equal(tensor, after[name]) for name, tensor in before.items())
