"""Fault injection: signals and kill -9 at random points, a second writer, file-size limits, read-only paths.

Every interrupted run is resumed and compared bit for bit with the same run done in one go.
The subprocess tests run the real `ddlm train`; the in-process ones stop the trainer at
chosen points inside a step (loader, loss, optimizer, EMA), several seeds each.
"""

from __future__ import annotations

import csv
import errno
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddlm.cli import main
from ddlm.data import BatchLoader
from ddlm.errors import DDLMError
from ddlm.training import load_config, prepare_training
from ddlm.training import logger as logger_module
from ddlm.training.checkpoint import CHECKPOINT_FILE, load_checkpoint
from ddlm.training.lock import RunLock
from ddlm.training.signals import TrainingInterrupted

STEPS = 24
SETTINGS = [f"optim.max_steps={STEPS}", "optim.precision=fp32", "optim.grad_accum=2", "model.dropout=0.1",
            "log.log_every=1", "log.save_every=4", "log.eval_every=0", "log.sample_every=0"]
WORDS = "the king queen of and to my lord thou art sir good night day love death".split()


def default_stop_signals() -> None:
    """SIGINT and SIGTERM at their defaults: a test run started in the background inherits them ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def stop_signals_enabled():
    """Ctrl-C raises KeyboardInterrupt in this process during each test, whatever the shell left ignored."""
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGINT, previous[0])
    signal.signal(signal.SIGTERM, previous[1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    generator = random.Random(0)
    path = tmp_path_factory.mktemp("faults") / "corpus.txt"
    path.write_text(" ".join(generator.choice(WORDS) for _ in range(4000)), encoding="utf-8")
    return path


def trainer_for(out: Path, corpus: Path, resume: bool = False, extra: tuple[str, ...] = ()):
    config = load_config("tiny", overrides=SETTINGS + list(extra))
    return prepare_training(config, out, data=corpus, resume=resume, device="cpu",
                            cache_dir=corpus.parent / "cache", show_progress=False)


@pytest.fixture(scope="module")
def reference(corpus) -> dict[str, torch.Tensor]:
    """The checkpoint tensors of the run done in one go."""
    out = corpus.parent / "reference"
    trainer_for(out, corpus).train()
    return load_file(str(out / CHECKPOINT_FILE))


def assert_same_run(out: Path, reference: dict[str, torch.Tensor]) -> None:
    tensors = load_file(str(out / CHECKPOINT_FILE))
    assert tensors.keys() == reference.keys()
    differing = [key for key in tensors if not torch.equal(tensors[key], reference[key])]
    assert not differing, f"{len(differing)} of {len(tensors)} checkpoint tensors differ, e.g. {differing[:3]}"
    assert load_checkpoint(out / CHECKPOINT_FILE)["train"]["step"] == STEPS
    assert logged_steps(out) == list(range(1, STEPS + 1))
    assert not list(out.glob(".*.tmp"))


def logged_steps(out: Path) -> list[int]:
    """The steps of the training rows of log.csv (validation rows left out)."""
    with (out / "log.csv").open(newline="", encoding="utf-8") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row["train_nelbo"]]


# ----- signals inside a step, in process -----

POINTS = ("loader", "loss", "optimizer", "ema")


def signal_at(trainer, point: str, step: int, number: int, monkeypatch, times: int = 1) -> None:
    """Deliver ``number`` to this process ``times`` times at ``point`` of optimizer step ``step`` (1-based).

    "loader" and "loss" happen once per micro-batch (twice per step here): the signal comes at the first.
    """
    remaining = [times]

    def fire(*args, **kwargs):
        if trainer.state.step == step - 1 and remaining[0] > 0:  # during step ``step``
            remaining[0] -= 1
            signal.raise_signal(number)

    if point == "loader":
        loader_next = BatchLoader.__next__
        monkeypatch.setattr(BatchLoader, "__next__", lambda self: (fire(), loader_next(self))[1])
    elif point == "loss":
        loss = trainer.process.loss
        trainer.process.loss = lambda *args: (fire(), loss(*args))[1]
    elif point == "optimizer":
        trainer.optimizer.register_step_post_hook(fire)
    else:
        update = trainer.ema.update
        trainer.ema.update = lambda model: (update(model), fire())[0]


@pytest.mark.parametrize("seed", range(4))
def test_a_signal_inside_a_step_stops_at_its_end_and_resumes_exactly(tmp_path, corpus, reference, seed, monkeypatch):
    generator = random.Random(seed)
    point, step = generator.choice(POINTS), generator.randint(1, STEPS - 1)
    number = generator.choice([signal.SIGINT, signal.SIGTERM])
    trainer = trainer_for(tmp_path / "run", corpus)
    signal_at(trainer, point, step, number, monkeypatch)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.train()
    monkeypatch.undo()
    assert (stop.value.step, stop.value.signal_name) == (step, signal.Signals(number).name)
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["train"]["step"] == step
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # put back
    trainer_for(tmp_path / "run", corpus, resume=True).train()
    assert_same_run(tmp_path / "run", reference)


def test_a_signal_during_the_final_export_stops_at_once_after_the_last_checkpoint(tmp_path, corpus, monkeypatch):
    trainer = trainer_for(tmp_path / "run", corpus)
    monkeypatch.setattr(trainer, "finish", lambda: signal.raise_signal(signal.SIGTERM))
    with pytest.raises(KeyboardInterrupt) as stop:
        trainer.train()
    assert not isinstance(stop.value, TrainingInterrupted)
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["train"]["step"] == STEPS


def test_a_second_signal_stops_at_once_and_keeps_the_last_checkpoint(tmp_path, corpus, monkeypatch):
    trainer = trainer_for(tmp_path / "run", corpus)
    monkeypatch.setattr("ddlm.training.signals.ECHO_SECONDS", 0.0)  # the second comes later than any echo
    signal_at(trainer, "loss", 6, signal.SIGINT, monkeypatch, times=2)  # two micro-batches: two signals in step 6
    with pytest.raises(KeyboardInterrupt) as stop:
        trainer.train()
    assert not isinstance(stop.value, TrainingInterrupted)
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["train"]["step"] == 4  # the periodic one
    RunLock(tmp_path / "run").acquire().release()  # the lock was released


def test_a_signal_echoed_at_once_is_one_request_and_the_run_resumes_exactly(tmp_path, corpus, reference, monkeypatch):
    """Ctrl-C on a torchrun job reaches a worker twice (from the terminal, and forwarded by the launcher)."""
    trainer = trainer_for(tmp_path / "run", corpus)
    signal_at(trainer, "loss", 6, signal.SIGINT, monkeypatch, times=2)  # both within step 6, well inside the echo time
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.train()
    monkeypatch.undo()
    assert stop.value.step == 6 and load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["train"]["step"] == 6
    trainer_for(tmp_path / "run", corpus, resume=True).train()
    assert_same_run(tmp_path / "run", reference)


def test_the_command_reports_a_stop_in_one_line_with_the_signal_exit_code(tmp_path, corpus, capsys, monkeypatch):
    """SIGTERM during step 3 of `ddlm train` (in process): exit 143 and how to continue."""
    loader_next = BatchLoader.__next__
    calls = []

    def next_batch(self):
        calls.append(1)
        if len(calls) == 5:  # step 3's first micro-batch
            signal.raise_signal(signal.SIGTERM)
        return loader_next(self)

    monkeypatch.setattr(BatchLoader, "__next__", next_batch)
    out = tmp_path / "run"
    code = main(["train", "--data", str(corpus), "--preset", "tiny", "--out", str(out), "--no-progress",
                 "--cache-dir", str(corpus.parent / "cache"), *SETTINGS])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 143
    assert err[-1] == f"stopped by SIGTERM at step 3, checkpoint saved; continue with `ddlm train --out {out} --resume`"


def test_an_ignored_signal_stays_ignored():
    """`ddlm train ... &` in a script ignores SIGINT (POSIX): the trainer must not make it stoppable by one."""
    from ddlm.training.signals import StopSignals

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


# ----- the real command in a subprocess -----

def start_training(out: Path, corpus: Path, resume: bool = False, limit_bytes: int | None = None) -> subprocess.Popen:
    """``ddlm train`` in a subprocess (a new run, or ``--resume``), optionally under a file-size limit."""
    run = ["--resume"] if resume else ["--data", str(corpus), "--preset", "tiny", *SETTINGS]
    command = [sys.executable, "-m", "ddlm.cli", "train", "--out", str(out), "--no-progress", "--device", "cpu",
               "--cache-dir", str(corpus.parent / "cache"), *run]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same arithmetic as this process

    def limit_file_size() -> None:
        default_stop_signals()
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.RLIM_INFINITY))

    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit_file_size)


def wait_for_step(process: subprocess.Popen, out: Path, step: int, checkpoint: bool = False) -> None:
    """Until log.csv has a row of ``step`` (and a checkpoint exists, if asked), or the process ended."""
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        log = out / "log.csv"
        if log.is_file() and len(logged_steps_safe(log)) >= step and (not checkpoint or (out / CHECKPOINT_FILE).is_file()):
            return
        time.sleep(0.005)


def logged_steps_safe(log: Path) -> list[str]:
    return [line for line in log.read_text(encoding="utf-8").splitlines()[1:] if line.endswith(tuple("0123456789"))]


@pytest.mark.parametrize("fault, seed", [
    ("SIGINT", 0), ("SIGKILL", 2),  # SIGTERM: in process above and in the command below; here with -m slow
    pytest.param("SIGTERM", 1, marks=pytest.mark.slow), pytest.param("SIGINT", 3, marks=pytest.mark.slow),
    pytest.param("SIGTERM", 4, marks=pytest.mark.slow), pytest.param("SIGKILL", 5, marks=pytest.mark.slow),
    pytest.param("SIGKILL", 6, marks=pytest.mark.slow),
])
def test_ddlm_train_stopped_at_a_random_point_resumes_bit_identically(tmp_path, corpus, reference, fault, seed):
    generator = random.Random(seed)
    out = tmp_path / "run"
    process = start_training(out, corpus)
    wait_for_step(process, out, generator.randint(1, STEPS // 2), checkpoint=fault == "SIGKILL")
    time.sleep(generator.uniform(0, 0.05))  # anywhere inside a step
    process.send_signal(getattr(signal, fault))
    _, err = process.communicate(timeout=600)
    # it may have finished before the signal came (exit 0), or be in its final export (a stop at once)
    if fault == "SIGKILL":
        assert process.returncode in (0, -signal.SIGKILL), err
    elif process.returncode != 0:
        last = err.strip().splitlines()[-1]
        assert "Traceback" not in err
        if last.startswith("stopped at once"):
            assert process.returncode == 130 and f"at step {STEPS} " in last, err
        else:
            assert process.returncode == {"SIGINT": 130, "SIGTERM": 143}[fault], err
            assert last.startswith(f"stopped by {fault} at step "), err
    assert main(["train", "--resume", "--out", str(out), "--no-progress", "--device", "cpu",
                 "--cache-dir", str(corpus.parent / "cache")]) == 0
    assert_same_run(out, reference)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="watches /proc/PID/maps for torch loading")
def test_ctrl_c_while_the_command_loads_torch_is_one_line_and_exit_130(tmp_path, corpus):
    process = subprocess.Popen([sys.executable, "-m", "ddlm.launcher", "train", "--data", str(corpus), "--out",
                                str(tmp_path / "run")], stderr=subprocess.PIPE, text=True,
                               preexec_fn=default_stop_signals)
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline and "libtorch" not in maps.read_text():
        time.sleep(0.001)
    process.send_signal(signal.SIGINT)  # torch is loading: inside `from ddlm.cli import main`
    _, err = process.communicate(timeout=60)
    assert (process.returncode, err) == (130, "interrupted\n")


def test_a_second_training_into_a_busy_directory_is_refused(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = RunLock(out).acquire()  # another training (flock: per open file, so also within one process)
    code = main(["train", "--data", str(corpus), "--preset", "tiny", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == f"error: {out} is in use by another training (process {os.getpid()}); " \
                     "wait for it to finish or choose another --out"
    holder.release()
    assert not (out / "log.csv").exists() and not (out / "run.json").exists()


def test_the_lock_dies_with_a_killed_process(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               str(out / ".train.lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(DDLMError, match="in use by another training"):
        RunLock(out).acquire()
    holder.kill()
    holder.wait()
    RunLock(out).acquire().release()


@pytest.mark.parametrize("what", ["log", "checkpoint"])
def test_a_file_size_limit_loses_no_row_and_no_checkpoint(tmp_path, corpus, reference, what):
    """RLIMIT_FSIZE during --resume: one line and exit 2; then a plain --resume ends exactly as the run in one go."""
    out = tmp_path / "run"
    trainer_for(out, corpus).train(stop_after=6)  # checkpoint at 6 (the periodic one at 4 is replaced)
    checkpoint = (out / CHECKPOINT_FILE).read_bytes()
    # "log": room for one more row (step 7), step 8's is cut short (rows are as long as step 6's, give or take
    # a digit of the timings); "checkpoint": the one of step 8 does not fit
    log = (out / "log.csv").read_bytes()
    row = max(map(len, log.splitlines(keepends=True)[1:]))  # a training row (the final validation's is shorter)
    limit = len(log) + row + row // 2 if what == "log" else len(checkpoint) // 2
    process = start_training(out, corpus, resume=True, limit_bytes=limit)
    _, err = process.communicate(timeout=600)
    lines = err.strip().splitlines()
    assert process.returncode == 2 and "Traceback" not in err, err
    expected = "could not append to" if what == "log" else "could not write the checkpoint"
    assert lines[-1].startswith(f"error: {expected}") and "(File too large)" in lines[-1], err
    assert (out / CHECKPOINT_FILE).read_bytes() == checkpoint
    assert logged_steps(out)[:6] == list(range(1, 7))
    assert main(["train", "--resume", "--out", str(out), "--no-progress", "--device", "cpu",
                 "--cache-dir", str(corpus.parent / "cache")]) == 0
    assert_same_run(out, reference)


def test_a_failed_log_rewrite_on_resume_leaves_it_unchanged(tmp_path, corpus, monkeypatch):
    out = tmp_path / "run"
    trainer_for(out, corpus).train(stop_after=6)
    with (out / "log.csv").open("a") as handle:  # rows of steps after the checkpoint, the last one cut short
        handle.write("7,1792,0.1,3.0e-03,2.9,,1000\n8,2048,0.1,3.0e-03,2")
    before = (out / "log.csv").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(logger_module, "write_text_atomic", full_disk)
    with pytest.raises(DDLMError, match=r"could not rewrite .*log.csv \(File too large\); it is unchanged"):
        trainer_for(out, corpus, resume=True)
    assert (out / "log.csv").read_bytes() == before
    monkeypatch.undo()
    trainer_for(out, corpus, resume=True)
    assert logged_steps(out) == list(range(1, 7))


def test_stale_temporary_files_are_removed_and_files_get_the_usual_mode(tmp_path, corpus):
    out = tmp_path / "run"
    trainer_for(out, corpus).train(stop_after=4)
    stale = out / ".checkpoint.safetensors.k2j3h4.tmp"
    stale.write_bytes(b"half a checkpoint")
    trainer = trainer_for(out, corpus, resume=True)
    assert not stale.exists()
    trainer.train()
    umask = os.umask(0)
    os.umask(umask)
    for name in ("checkpoint.safetensors", "model.safetensors", "config.json", "run.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# ----- read-only and odd paths -----

def one_line_error(capsys, args: list[str]) -> str:
    code = main(args)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert not captured.out  # refused before any work
    return lines[0]


@pytest.mark.parametrize("where, message", [
    ("a file", "is a file, not a directory"),
    ("under a file", "cannot write in the run directory"),
    ("under /proc", "cannot write in the run directory"),
])
def test_out_on_a_path_that_cannot_be_a_run_directory(tmp_path, corpus, capsys, where, message):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    out = {"a file": a_file, "under a file": a_file / "run", "under /proc": Path("/proc/ddlm-test/run")}[where]
    line = one_line_error(capsys, ["train", "--data", str(corpus), "--preset", "tiny", "--out", str(out)])
    assert message in line and str(out) in line


def test_resume_in_a_read_only_run_directory(tmp_path, corpus, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories; the /proc cases above cover unwritable paths")
    out = tmp_path / "run"
    trainer_for(out, corpus).train(stop_after=2)
    out.chmod(0o555)
    try:
        line = one_line_error(capsys, ["train", "--resume", "--out", str(out)])
    finally:
        out.chmod(0o755)
    assert "cannot write in the run directory" in line


@pytest.mark.parametrize("target, message", [("/proc/ddlm-test.json", "cannot write the --json file"),
                                             (".", "is a directory")])
def test_eval_json_to_an_unwritable_path_fails_before_the_work(tmp_path, capsys, target, message):
    line = one_line_error(capsys, ["eval", "--model", str(tmp_path / "no-model"), "--json", target])
    assert message in line
