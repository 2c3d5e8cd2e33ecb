"""Tiny models trained once per test session, and a real server on a free loopback port, for the serve tests."""

from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

CORPUS_LINES = [
    "ROMEO: But soft, what light through yonder window breaks?",
    "JULIET: O Romeo, Romeo, wherefore art thou Romeo?",
    "HAMLET: To be, or not to be, that is the question.",
    "MACBETH: Tomorrow, and tomorrow, and tomorrow.",
    "The quick brown fox jumps over the lazy dog; THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!",
    "Less is more: 1 < 2 & 3 > 2.",
]


@functools.cache
def trained_models() -> dict[str, Path]:
    """A masked-diffusion and an autoregressive tiny model, trained by the CLI for 20 steps (a few seconds)."""
    from ddlm.cli import main

    root = Path(tempfile.mkdtemp(prefix="ddlm-serve-test-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(CORPUS_LINES * 60) + "\n", encoding="utf-8")
    models = {}
    for name, overrides in (("tiny-masked", []), ("tiny-ar", ["process.name=ar"])):
        out = root / name
        code = main(["train", "--data", str(corpus), "--preset", "tiny", "--max-steps", "20", "--out", str(out),
                     "--no-progress", "--cache-dir", str(root / "cache"), *overrides])
        assert code == 0, f"training {name} failed"
        models[name] = out
    return models


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free port; yields its base URL and always stops it."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.1)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)
