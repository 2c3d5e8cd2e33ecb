"""The fault and bad-input probe's cases: each gets a one-line error naming the problem and the fix, or a
correct result. Damaged files (configs, weights, token caches, checkpoints), changed corpora on resume,
and requests that try to exhaust the server (chunked bodies, idle connections)."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ddlm import DiffusionPipeline
from ddlm.app.api import MAX_BODY_BYTES, BodySizeCap
from ddlm.bundled import bundled_model_path
from ddlm.cli import main
from ddlm.data import tokenize_corpus
from ddlm.errors import DDLMError
from ddlm.tokenizers import build_tokenizer
from ddlm.training import load_config, prepare_training
from ddlm.training.checkpoint import CHECKPOINT_FILE
from tests.servers import free_port


def one_line(error: pytest.ExceptionInfo, *parts: str) -> str:
    """The error's message, checked to be one line containing every one of ``parts``."""
    message = str(error.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# ----- model directories -----


@pytest.fixture
def model_config_dir(tmp_path: Path) -> Path:
    """The bundled model's config and tokenizer, without weights: loading reads them before any weights."""
    directory = tmp_path / "model"
    directory.mkdir()
    for name in ("config.json", "tokenizer_config.json"):
        shutil.copy(bundled_model_path("shakespeare") / name, directory / name)
    return directory


def edit_model_config(directory: Path, key: str, value) -> None:
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    config["model"][key] = value
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")


@pytest.mark.parametrize("key, value, problem", [
    ("d_model", -256, "at least 1, got -256"),
    ("n_layers", 0, "at least 1, got 0"),
    ("context_length", -1, "at least 1, got -1"),
    ("vocab_size", -68, "at least 1, got -68"),
    ("n_heads", "4", "a whole number, got '4' (str)"),
    ("dropout", 1.5, "in [0, 1), got 1.5"),
    ("norm_eps", "1e-6", "a number, got '1e-6' (str)"),
    ("time_conditioning", "yes", "true or false, got 'yes'"),
    ("cond_dim", 64.0, "a whole number or null, got 64.0 (float)"),
])
def test_a_model_config_of_bad_sizes_or_types_is_refused_naming_the_key(model_config_dir, key, value, problem):
    edit_model_config(model_config_dir, key, value)
    with pytest.raises(DDLMError) as error:
        DiffusionPipeline.from_pretrained(model_config_dir, device="cpu")
    one_line(error, "config.json", f"model.{key} must be {problem}")


def test_the_cli_refuses_a_negative_size_in_one_line(model_config_dir, capsys):
    edit_model_config(model_config_dir, "context_length", -1)
    for command in (["sample", "--length", "4", "--steps", "2"], ["eval", "--data", "shakespeare"]):
        assert main([*command, "--model", str(model_config_dir)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith("error: ") and "model.context_length must be at least 1" in lines[-1]
        assert "Traceback" not in "".join(lines)


@pytest.mark.parametrize("section, problem", [
    ("model: {d_model: wide}", "model.d_model must be a number, got 'wide'"),
    ("model: {n_heads: [4]}", "model.n_heads must be a number, got [4]"),
    ("model: {causal_attention: true}", "unknown config key 'model.causal_attention'"),
    ("optim: {lr: {value: 1}}", "optim.lr must be a number"),
    ("process: {antithetic: 1}", "process.antithetic must be true or false, got 1"),
    ("model: [1, 2]", "config section 'model' must be a mapping"),
])
def test_a_training_config_of_wrong_types_names_the_key_and_type(tmp_path, capsys, section, problem):
    config = tmp_path / "config.yaml"
    config.write_text(section + "\n", encoding="utf-8")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and problem in line
    assert not (tmp_path / "run").exists()


class Unpickled:
    """Leaves a marker file when unpickled: proof that loading ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.mark.parametrize("config", [
    "ddlm",  # a ddlm config.json next to the pickle
    {"model_type": "bert", "architectures": ["BertForMaskedLM"]},  # a transformers model directory
    None,  # the pickle alone
])
def test_pickled_weights_are_refused_unopened_with_how_to_convert(tmp_path, model_config_dir, config):
    directory = tmp_path / "pickled"
    if config == "ddlm":
        shutil.copytree(model_config_dir, directory)
    else:
        directory.mkdir()
        if config is not None:
            (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    marker = tmp_path / "unpickled"
    (directory / "pytorch_model.bin").write_bytes(pickle.dumps(Unpickled(marker)))
    with pytest.raises(DDLMError) as error:
        DiffusionPipeline.from_pretrained(directory, device="cpu")
    one_line(error, "pytorch_model.bin", "pickles", "refuses", "save_pretrained(", "safe_serialization=True",
             "model.safetensors")
    assert not marker.exists()


# ----- prompts and suffixes against the context -----


@pytest.fixture(scope="module")
def bundled() -> DiffusionPipeline:
    return DiffusionPipeline.from_pretrained("shakespeare", device="cpu", precision="fp32")


@pytest.mark.parametrize("prompt, suffix, named", [
    (None, "x" * 300, "the suffix is 300 tokens"),
    ("x" * 300, None, "the prompt is 300 tokens"),
    ("x" * 100, "y" * 156, "the prompt and suffix are 256 tokens"),
])
def test_a_prompt_or_suffix_that_fills_the_context_is_named(bundled, prompt, suffix, named):
    with pytest.raises(DDLMError) as error:
        bundled.canvas_rows(prompt, 1, None, suffix=suffix)
    message = one_line(error, named, "context of 256", "shorten the")
    assert ("suffix" in message) == (suffix is not None)


def test_a_length_past_the_context_counts_the_suffix(bundled):
    with pytest.raises(DDLMError) as error:
        bundled.canvas_rows("ROMEO:", 1, 250, suffix="x" * 10)
    one_line(error, "prompt (6) + suffix (10) + length (250)", "ask for length 240 or less")
    assert len(bundled.canvas_rows("ROMEO:", 1, 240, suffix="x" * 10)[0]) == 256


# ----- token caches -----

DOCUMENTS = ["ROMEO: But soft, what light through yonder window breaks? " * 20, "JULIET: O Romeo, Romeo!"]


@pytest.mark.parametrize("damage", [
    lambda data: bytes(len(data)),  # zeroed
    lambda data: data[: len(data) // 3],  # truncated
    lambda data: np.random.default_rng(0).bytes(len(data)),  # overwritten with random bytes (ids past the vocabulary)
    lambda data: data + b"\x01\x02",  # extended
], ids=["zeroed", "truncated", "random", "extended"])
def test_a_damaged_token_cache_is_rebuilt_with_one_line(tmp_path, capsys, damage):
    tokenizer = build_tokenizer("char", texts=DOCUMENTS)
    expected = tokenize_corpus(DOCUMENTS, tokenizer, tmp_path)
    expected_tokens, expected_starts = np.array(expected.tokens), np.array(expected.doc_starts)
    (tokens,) = tmp_path.glob("*.tokens.bin")
    tokens.write_bytes(damage(tokens.read_bytes()))
    capsys.readouterr()

    rebuilt = tokenize_corpus(DOCUMENTS, tokenizer, tmp_path)
    np.testing.assert_array_equal(rebuilt.tokens, expected_tokens)
    np.testing.assert_array_equal(rebuilt.doc_starts, expected_starts)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "token cache" in line and "damaged" in line and line.endswith("rebuilding it")
    tokenize_corpus(DOCUMENTS, tokenizer, tmp_path)  # intact again: a silent hit
    assert capsys.readouterr().err == ""


def test_a_token_cache_with_a_damaged_record_or_starts_file_is_rebuilt(tmp_path, capsys):
    tokenizer = build_tokenizer("char", texts=DOCUMENTS)
    expected = np.array(tokenize_corpus(DOCUMENTS, tokenizer, tmp_path).doc_starts)
    (starts,) = tmp_path.glob("*.starts.npy")
    starts.write_bytes(starts.read_bytes()[:-8])
    np.testing.assert_array_equal(tokenize_corpus(DOCUMENTS, tokenizer, tmp_path).doc_starts, expected)
    assert "starts file" in capsys.readouterr().err
    (record,) = tmp_path.glob("*.json")
    record.write_text("{", encoding="utf-8")
    np.testing.assert_array_equal(tokenize_corpus(DOCUMENTS, tokenizer, tmp_path).doc_starts, expected)
    assert "unreadable checksum record" in capsys.readouterr().err


# ----- resuming a run -----


@pytest.fixture
def corpus(tmp_path: Path, shakespeare_text: str) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(shakespeare_text[:20000], encoding="utf-8")
    return path


def trainer_for(out: Path, corpus: Path, resume: bool = False, accept: bool = False, steps: int = 4):
    config = load_config("tiny", overrides=["optim.precision=fp32", f"optim.max_steps={steps}", "log.eval_every=0",
                                            "log.save_every=0", "data.valid_fraction=0.1"])
    return prepare_training(config, out, data=corpus, resume=resume, device="cpu", cache_dir=out.parent / "cache",
                            show_progress=False, accept_data_change=accept)


@pytest.fixture
def stopped_run(tmp_path, corpus) -> Path:
    """A run stopped at step 2 of 4, with its checkpoint."""
    out = tmp_path / "run"
    trainer_for(out, corpus).train(stop_after=2)
    return out


def test_resuming_on_another_corpus_is_refused_naming_the_override(stopped_run, corpus, shakespeare_text):
    other = corpus.parent / "other.txt"
    other.write_text(shakespeare_text[20000:40000], encoding="utf-8")
    with pytest.raises(DDLMError) as error:
        trainer_for(stopped_run, other, resume=True)
    one_line(error, "training data", str(other), "is not the corpus this run used", str(corpus),
             "--accept-data-change")

    trainer = trainer_for(stopped_run, other, resume=True, accept=True)
    assert trainer.state.step == 2
    assert trainer.train_loader.state_dict() == {"seed": 0, "epoch": 0, "position": 0}  # the new text from its start
    run = json.loads((stopped_run / "run.json").read_text(encoding="utf-8"))
    assert run["data"] == str(other) and run["history"][-1]["changes"]["data"][1] == run["fingerprints"]["data"]
    trainer.train()
    trainer_for(stopped_run, other, resume=True, steps=6).train()  # the accepted text is now the run's own


def test_a_corpus_changed_between_runs_is_refused(stopped_run, corpus):
    corpus.write_text(corpus.read_text(encoding="utf-8").replace("the", "thy"), encoding="utf-8")
    with pytest.raises(DDLMError) as error:
        trainer_for(stopped_run, corpus, resume=True)
    one_line(error, str(corpus), "changed since this run last used it", "--accept-data-change")


def test_a_run_without_recorded_fingerprints_resumes_and_records_them(stopped_run, corpus):
    run_file = stopped_run / "run.json"
    run = json.loads(run_file.read_text(encoding="utf-8"))
    fingerprints = run.pop("fingerprints")
    run_file.write_text(json.dumps(run), encoding="utf-8")  # as an older ddlm wrote it
    assert trainer_for(stopped_run, corpus, resume=True).state.step == 2
    assert json.loads(run_file.read_text(encoding="utf-8"))["fingerprints"] == fingerprints


def rewrite_metadata(path: Path, edit) -> None:
    """Rewrite a checkpoint with ``edit`` applied to its trainer state (the JSON in its metadata)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    state = json.loads(metadata["trainer_state"])
    edit(state)
    save_file(load_file(str(path)), str(path), metadata={**metadata, "trainer_state": json.dumps(state)})


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_a_checkpoint_whose_step_was_edited_is_refused(stopped_run, corpus, step):
    rewrite_metadata(stopped_run / CHECKPOINT_FILE, lambda state: state["train"].update(step=step))
    with pytest.raises(DDLMError) as error:
        trainer_for(stopped_run, corpus, resume=True)
    one_line(error, f"says step {step} but its optimizer took 2 steps", "intact copy")


def test_the_cli_refuses_a_changed_corpus_and_an_edited_step_in_one_line(stopped_run, corpus, capsys):
    os.utime(corpus)  # touched, not changed: resumes
    rewrite_metadata(stopped_run / CHECKPOINT_FILE, lambda state: state["train"].update(step=7))
    arguments = ["train", "--out", str(stopped_run), "--resume", "--cache-dir", str(corpus.parent / "cache"),
                 "--no-progress"]
    assert main(arguments) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: checkpoint")
    rewrite_metadata(stopped_run / CHECKPOINT_FILE, lambda state: state["train"].update(step=2))
    corpus.write_text("another text entirely " * 200, encoding="utf-8")
    assert main(arguments) == 2
    assert "--accept-data-change" in capsys.readouterr().err.strip().splitlines()[-1]


# ----- the server: bodies without a length, idle connections -----

SERVER = """
import resource, sys
from ddlm.app.server import create_app, uvicorn_settings
from ddlm.app.service import Models
import uvicorn

resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
app = create_app(Models.load(["shakespeare"], device="cpu"), web_page=False)
uvicorn.run(app, **uvicorn_settings("127.0.0.1", int(sys.argv[1])))
"""
DESCRIPTORS = 256  # the server's file-descriptor limit: 300 idle connections would use them all up


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    """``ddlm serve``'s app and settings in a process of its own, limited to DESCRIPTORS open files."""
    port = free_port()
    script = SERVER.replace("DESCRIPTORS", str(DESCRIPTORS))
    process = subprocess.Popen([sys.executable, "-c", script, str(port)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 600  # a guard: a busy machine takes minutes to import torch
        while not answers_health(port, timeout=2):
            assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def answers_health(port: int, timeout: float) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=timeout).status_code == 200
    except httpx.TransportError:
        return False


def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def read_answer(connection: socket.socket) -> tuple[bytes, bytes]:
    """The status line and the body of one HTTP answer (with a Content-Length)."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += connection.recv(65536) or pytest.fail(f"the connection closed after {received!r}")
    head, body = received.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += connection.recv(65536) or pytest.fail("the connection closed before the answer's end")
    return head.split(b"\r\n")[0], body


def test_a_chunked_body_over_the_cap_gets_413_before_the_rest_is_sent(server_port):
    chunk = b"x" * 65536
    with socket.create_connection(("127.0.0.1", server_port), timeout=60) as connection:
        connection.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(MAX_BODY_BYTES // len(chunk) + 1):  # just past the cap; the body never ends
            connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, body = read_answer(connection)  # a server that waited for the whole body would never answer
    assert status.startswith(b"HTTP/1.1 413 ") and json.loads(body)["error"]["type"] == "over_limit"


def test_a_chunked_body_under_the_cap_is_served(server_port):
    body = json.dumps({"prompt": "ROMEO:", "length": 4, "steps": 2, "seed": 0}).encode()
    chunks = (body[:5], body[5:])
    answer = httpx.post(f"http://127.0.0.1:{server_port}/v1/generate", content=iter(chunks), timeout=60,
                        headers={"content-type": "application/json"})
    assert answer.status_code == 200 and answer.json()["texts"][0].startswith("ROMEO:")


def test_idle_connections_cannot_stall_health(server_port):
    idle = [socket.create_connection(("127.0.0.1", server_port), timeout=60) for _ in range(300)]
    half_sent = socket.create_connection(("127.0.0.1", server_port), timeout=60)
    half_sent.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
    try:
        assert answers_health(server_port, timeout=60)
        assert idle[0].recv(1) == b""  # the oldest idle connections made room for newer ones
        assert idle[-1].recv(1) == b""  # the newest was closed by its deadline
        assert read_until_closed(half_sent) == b""
    finally:
        for connection in [*idle, half_sent]:
            connection.close()


def test_the_body_cap_reads_no_further_than_the_cap():
    """At the ASGI level: the app never runs, and the body is read one message past the cap, no further."""
    chunk = b"x" * 65536
    reads = []

    async def receive() -> dict:
        reads.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": len(reads) < 500}  # 32 MB in all

    async def app(scope, receive, send):
        raise AssertionError("the app must not see an oversized body")

    sent = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/generate", "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(BodySizeCap(app)(scope, receive, send))
    assert sent[0]["status"] == 413 and json.loads(sent[1]["body"])["error"]["type"] == "over_limit"
    assert sum(reads) == (MAX_BODY_BYTES // len(chunk) + 1) * len(chunk)
