"""Load test of `ddlm serve`: N concurrent clients for T seconds against a local server.

Starts `ddlm serve` in a subprocess (or uses --url), then each client sends generation
requests back to back: plain /v1/generate, or /v1/generate/stream read to the end, and a
share of deliberately bad requests. Prints latency percentiles of the answered requests,
requests per second, answers by kind (200, deliberate 422, 429 queue full, anything else
is an error) and the server's resident memory sampled every half second (start, peak, end).

    python benchmarks/serve_load.py --model runs/shakespeare --clients 16 --seconds 120
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

PROMPTS = ["ROMEO:", "JULIET:", "To be, or not", "First Citizen:", "KING HENRY:", "O, "]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process (Linux /proc), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "ddlm.cli", "serve", "--port", str(port), "--workers", str(args.workers),
               "--queue", str(args.queue)]
    for model in args.model:
        command += ["--model", model]
    server = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("error: the server did not start")
        time.sleep(0.25)


def request_body(rng: random.Random, args: argparse.Namespace) -> dict:
    return {"prompt": rng.choice(PROMPTS), "length": args.length, "steps": args.steps, "seed": rng.randrange(2**31)}


async def one_request(client: httpx.AsyncClient, rng: random.Random, args: argparse.Namespace) -> tuple[str, float]:
    """Send one request; return its kind of answer and its latency in seconds."""
    started = time.perf_counter()
    draw = rng.random()
    try:
        if draw < args.bad_share:
            answer = await client.post("/v1/generate", content=b'{"steps": ', headers={"content-type": "application/json"})
            kind = "422 deliberate" if answer.status_code == 422 else f"{answer.status_code} unexpected"
        elif draw < args.bad_share + args.stream_share:
            async with client.stream("POST", "/v1/generate/stream", json=request_body(rng, args)) as answer:
                if answer.status_code != 200:
                    await answer.aread()
                    kind = f"{answer.status_code} {answer.json()['error']['type']}"
                else:
                    last = ""
                    async for line in answer.aiter_lines():
                        if line.startswith("event:"):
                            last = line
                    kind = "200 stream" if last == "event: result" else f"stream ended with {last!r}"
        else:
            answer = await client.post("/v1/generate", json=request_body(rng, args))
            kind = "200" if answer.status_code == 200 else f"{answer.status_code} {answer.json()['error']['type']}"
    except httpx.HTTPError as error:
        kind = f"transport error {type(error).__name__}"
    return kind, time.perf_counter() - started


async def client_loop(index: int, url: str, args: argparse.Namespace, stop_at: float, results: list) -> None:
    rng = random.Random(index)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout) as client:
        while time.monotonic() < stop_at:
            kind, seconds = await one_request(client, rng, args)
            results.append((kind, seconds))
            if kind.startswith("429"):
                await asyncio.sleep(args.backoff)  # as a polite client does after a 429


async def sample_memory(pid: int | None, stop_at: float, samples: list) -> None:
    while pid is not None and time.monotonic() < stop_at:
        samples.append((time.monotonic(), rss_mib(pid)))
        await asyncio.sleep(0.5)


async def run_load(url: str, pid: int | None, args: argparse.Namespace) -> tuple[list, list]:
    results, memory = [], []
    stop_at = time.monotonic() + args.seconds
    await asyncio.gather(sample_memory(pid, stop_at, memory),
                         *(client_loop(index, url, args, stop_at, results) for index in range(args.clients)))
    return results, memory


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1] if len(values) > 1 else values[0]


def report(results: list, memory: list, args: argparse.Namespace) -> dict:
    kinds = Counter(kind for kind, _ in results)
    answered = [seconds for kind, seconds in results if kind.startswith("200")]
    refused = [seconds for kind, seconds in results if kind.startswith("429")]
    errors = {kind: count for kind, count in kinds.items()
              if not kind.startswith(("200", "429", "422 deliberate"))}
    rss = [value for _, value in memory if value is not None]
    summary = {
        "clients": args.clients, "seconds": args.seconds, "length": args.length, "steps": args.steps,
        "workers": args.workers, "queue": args.queue, "answers": dict(kinds), "errors": errors,
        "generations_per_second": round(len(answered) / args.seconds, 3),
        "requests_per_second": round(len(results) / args.seconds, 3),
        "latency_p50_s": round(percentile(answered, 0.50), 3) if answered else None,
        "latency_p95_s": round(percentile(answered, 0.95), 3) if answered else None,
        "refusal_latency_p95_s": round(percentile(refused, 0.95), 4) if refused else None,
    }
    if rss:
        tenth = max(1, len(rss) // 10)
        summary |= {"rss_start_mib": round(statistics.mean(rss[:tenth]), 1), "rss_peak_mib": round(max(rss), 1),
                    "rss_end_mib": round(statistics.mean(rss[-tenth:]), 1)}
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="model directory or bundled name (repeatable)")
    parser.add_argument("--url", help="an already running server (its memory is then not sampled)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--length", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="the server's --workers")
    parser.add_argument("--queue", type=int, default=4, help="the server's --queue")
    parser.add_argument("--stream-share", type=float, default=0.5, help="share of requests to /v1/generate/stream")
    parser.add_argument("--bad-share", type=float, default=0.05, help="share of deliberately malformed requests")
    parser.add_argument("--backoff", type=float, default=0.5, help="seconds a client waits after a 429")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    server, url = (None, args.url) if args.url else start_server(args)
    try:
        warm = httpx.post(f"{url}/v1/generate", json={"length": args.length, "steps": args.steps}, timeout=args.timeout)
        warm.raise_for_status()
        results, memory = asyncio.run(run_load(url, server.pid if server else None, args))
        health = httpx.get(f"{url}/health", timeout=10).json()
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    summary = report(results, memory, args) | {"server_queue_counts": health["queue"]}
    width = max(map(len, summary))
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
