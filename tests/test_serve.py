"""`ddlm serve`: the HTTP API through the real ASGI app, the bounded queue, cancellation and the command."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the app extra is not installed")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from ddlm.app.limits import GenerationPool, Limits, QueueFull, RunStopped  # noqa: E402
from ddlm.app.render import Frame, canvas_html, status_html  # noqa: E402
from ddlm.app.server import create_app, serve  # noqa: E402
from ddlm.app.service import GenerationRequest, Model, Models, open_stream, planned_steps  # noqa: E402
from ddlm.bundled import bundled_models  # noqa: E402
from ddlm.cli import main  # noqa: E402
from ddlm.errors import DDLMError  # noqa: E402
from ddlm.samplers import SamplerOptions  # noqa: E402
from ddlm.viz.tokens import TokenPieces, step_views  # noqa: E402
from tests.servers import live_server, trained_models  # noqa: E402

LIMITS = Limits(max_samples=2, max_length=24, max_steps=64, max_seconds=30, workers=1, queue_size=2)


@pytest.fixture(scope="module")
def models() -> Models:
    paths = trained_models()
    return Models.load([str(paths["tiny-masked"]), str(paths["tiny-ar"])])


@pytest.fixture
def client(models):
    with TestClient(create_app(models, LIMITS, web_page=False)) as test_client:
        yield test_client


def events_of(body: str) -> list[tuple[str, dict]]:
    """The (event, data) pairs of a Server-Sent-Events body."""
    events = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


class GatedForward:
    """A model's forward that waits for ``gate`` (and ``delay`` seconds) before each call, and counts its calls."""

    def __init__(self, model, delay: float = 0.0, gate: threading.Event | None = None):
        self.forward, self.delay, self.gate, self.calls = model.forward, delay, gate, 0

    def __call__(self, *args, **kwargs):
        if self.gate is not None:
            assert self.gate.wait(timeout=30)
        time.sleep(self.delay)
        self.calls += 1
        return self.forward(*args, **kwargs)


def slow_down(monkeypatch, models: Models, delay: float = 0.0, gate: threading.Event | None = None) -> GatedForward:
    model = models.get("tiny-masked").pipe.model
    gated = GatedForward(model, delay, gate)
    monkeypatch.setattr(model, "forward", gated)
    return gated


def test_health_and_models_describe_the_server(client, models):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["models"] == ["tiny-masked", "tiny-ar"]
    assert health["limits"]["max_samples"] == LIMITS.max_samples
    listed = client.get("/v1/models").json()
    assert listed["default"] == "tiny-masked"
    cards = {card["name"]: card for card in listed["models"]}
    masked = models.get("tiny-masked").pipe
    assert cards["tiny-masked"]["held_out_nelbo"] == masked.summary["final_valid_nelbo"]
    assert cards["tiny-masked"]["parameters"] == masked.model.num_parameters()
    assert cards["tiny-masked"]["process"]["name"] == "masked" and cards["tiny-ar"]["process"]["name"] == "ar"
    assert "policy" in cards["tiny-masked"]["sampler_defaults"] and "policy" not in cards["tiny-ar"]["sampler_defaults"]
    assert client.get("/docs").status_code == 200
    assert "/v1/generate/stream" in client.get("/openapi.json").json()["paths"]


def test_generate_matches_the_pipeline_and_repeats_with_its_seed(client, models):
    body = {"prompt": "ROMEO:", "length": 12, "steps": 6, "seed": 7, "num_samples": 2, "policy": "confidence"}
    answer = client.post("/v1/generate", json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    pipe = models.get(None).pipe
    expected = pipe.generate("ROMEO:", num_samples=2, length=12, steps=6, seed=7, policy="confidence")
    assert result["texts"] == expected
    assert all(text.startswith("ROMEO:") for text in result["texts"])
    assert [len(ids) for ids in result["token_ids"]] == [6 + 12] * 2
    assert result["seed"] == 7 and result["options"]["policy"] == "confidence" and result["options"]["steps"] == 6
    assert 1 <= result["model_calls"] <= 6 and 0 < result["seconds"] < LIMITS.max_seconds  # measured, within the limit
    again = client.post("/v1/generate", json=body).json()
    assert again["texts"] == result["texts"] and again["token_ids"] == result["token_ids"]
    fresh = client.post("/v1/generate", json={"length": 8, "steps": 4}).json()
    assert isinstance(fresh["seed"], int)  # drawn, and reported so that the run can be repeated


def test_generate_takes_the_entropy_bound_and_the_dual_cache(client, models):
    body = {"prompt": "ROMEO:", "length": 16, "steps": 16, "seed": 3, "policy": "random", "entropy_bound": 50.0,
            "block_length": 8, "dual_cache": True}
    result = client.post("/v1/generate", json=body).json()
    options = {key: value for key, value in body.items() if key not in ("prompt", "length")}
    assert result["texts"] == models.get(None).pipe.generate("ROMEO:", length=16, **options)
    assert result["options"]["entropy_bound"] == 50.0 and result["options"]["dual_cache"] is True
    assert result["model_calls"] == 2  # a bound this large fills each block in one call
    answer = client.post("/v1/generate", json={**body, "policy": "ancestral"})
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "entropy_bound"


def test_a_length_past_the_context_says_how_much_room_the_prompt_leaves(client):
    answer = client.post("/v1/generate", json={"prompt": "ROMEO: abcdefghij", "length": 20})
    assert answer.json()["error"]["message"] == ("length 20 does not fit: the model's context of 32 tokens leaves 15 "
                                                 "after the prompt; ask for 15 or fewer")
    assert client.post("/v1/generate", json={"prompt": "ROMEO: abcdefghij", "length": 15, "steps": 4}).status_code == 200


def test_planned_steps_count_tokens_for_a_left_to_right_model_and_the_budget_otherwise(models):
    masked, ar = models.get("tiny-masked"), models.get("tiny-ar")
    generated = [[False] * 4 + [True] * 26]
    assert planned_steps(masked, SamplerOptions(steps=16), generated) == 16
    assert planned_steps(masked, SamplerOptions(steps=16, policy="first-hitting"), generated) == 26
    assert planned_steps(ar, SamplerOptions(steps=16), generated) == 26  # AR ignores the budget


def test_planned_steps_of_a_block_model_bound_the_steps_its_sampler_takes(tmp_path):
    """The budget's share per block times the blocks: reached when every block has a position per step,
    else an upper bound (a block ends once all its positions are revealed). No end-of-text (min_length):
    a sample's end takes a step of its own, writing PAD after it."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("ROMEO: what light through yonder window breaks\n" * 40, encoding="utf-8")
    assert main(["train", "--data", str(corpus), "--preset", "tiny", "--max-steps", "1", "--out", str(tmp_path / "run"),
                 "--no-progress", "--cache-dir", str(tmp_path / "cache"), "process.name=block",
                 "process.block_size=4"]) == 0
    model = Models.load([str(tmp_path / "run")]).get("run")

    def steps_and_plan(prompt: str, length: int, options: SamplerOptions) -> tuple[int, int]:
        steps = list(model.pipe.stream(prompt, options, num_samples=2, length=length, stop_at_eos=False))
        generated = [view.generated for view in step_views(steps[-1])]
        return steps[-1].index + 1, planned_steps(model, options, generated)

    taken, planned = steps_and_plan("ROME", 12, SamplerOptions(steps=12, seed=0, policy="confidence", min_length=12))
    assert planned == 3 * 4 and taken == planned  # columns 4-15: blocks 1-3, 4 steps each, one position per step
    taken, planned = steps_and_plan("RO", 13, SamplerOptions(steps=16, seed=0, min_length=13))
    assert planned == 4 * 5 and 4 <= taken <= planned  # block 0 holds 2 of the 13 positions: ancestral may end it early


@pytest.mark.skipif(not bundled_models()[0].installed, reason="the bundled model's weights are not installed")
def test_the_model_card_tab_and_v1_models_give_the_bundled_models_own_figures():
    pytest.importorskip("gradio", reason="the app extra is not installed")
    from ddlm.app.ui import card_markdown

    bundled = Models.load([bundled_models()[0].name])
    model = bundled.get(None)
    readme = (bundled_models()[0].path / "README.md").read_text()
    with TestClient(create_app(bundled, LIMITS, web_page=False)) as client:
        card = client.get("/v1/models").json()["models"][0]
    assert card["held_out_nelbo"] == model.pipe.summary["held_out_nelbo"] != model.pipe.summary["final_valid_nelbo"]
    assert f"{card['held_out_nelbo']:.4f}" in readme  # the figure the model card reports
    assert card_markdown(model) == readme.strip()  # the tab renders the model card itself


def test_a_model_without_a_card_gets_one_in_words(models):
    pytest.importorskip("gradio", reason="the app extra is not installed")
    from ddlm.app.ui import card_markdown

    model = models.get("tiny-masked")
    summary = model.pipe.summary
    card = card_markdown(model)
    assert f"**{summary['final_valid_nelbo']:.4f} nats/token**" in card
    assert f"{summary['tokens']:,} tokens" in card and f"{model.pipe.model.num_parameters():,} parameters" in card


def test_generate_with_the_autoregressive_model_and_an_infill_template(client):
    ar = client.post("/v1/generate", json={"model": "tiny-ar", "prompt": "JULIET:", "length": 10, "seed": 1}).json()
    assert ar["model"] == "tiny-ar" and ar["model_calls"] == 10 and "policy" not in ar["options"]
    infill = client.post("/v1/generate", json={"infill": "To be, [MASK*5] not", "steps": 5, "seed": 2}).json()
    assert infill["texts"][0].startswith("To be, ") and infill["texts"][0].endswith(" not")


def test_stream_events_equal_the_pipeline_stream(client, models):
    body = {"prompt": "HAMLET:", "length": 16, "steps": 8, "seed": 3, "num_samples": 2}
    answer = client.post("/v1/generate/stream", json=body)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    events = events_of(answer.text)
    kinds = [kind for kind, _ in events]
    assert kinds == ["step"] * (len(events) - 1) + ["result"]
    expected = list(models.get(None).pipe.stream("HAMLET:", num_samples=2, length=16, steps=8, seed=3))
    assert len(events) - 1 == len(expected)
    for (_, event), step in zip(events, expected):
        active = step.canvas.active
        assert event["index"] == step.index and event["model_calls"] == step.model_calls
        assert event["tokens"] == [step.tokens[row][active[row]].tolist() for row in range(2)]
        assert event["revealed"] == [step.revealed[row].nonzero().flatten().tolist() for row in range(2)]
        assert event["remasked"] == [step.remasked[row].nonzero().flatten().tolist() for row in range(2)]
        assert event["texts"] == step.texts
        assert event["noise"] == pytest.approx(step.noise, abs=1e-6)
    result = events[-1][1]
    assert result["texts"] == expected[-1].texts and result["seed"] == 3
    assert result == {**client.post("/v1/generate", json=body).json(), "seconds": result["seconds"]}


def bad_requests() -> dict[str, tuple[dict | bytes, int, str | None]]:
    """Each class of bad input: (body, expected status, field the error names)."""
    return {
        "malformed JSON": (b'{"prompt": "ROMEO:",', 422, None),
        "body not an object": (b"[1, 2]", 422, None),
        "wrong type": ({"steps": "many"}, 422, "steps"),
        "boolean for a number": ({"num_samples": True}, 422, "num_samples"),
        "unknown field": ({"stpes": 4}, 422, "stpes"),
        "steps out of range": ({"steps": 0}, 422, "steps"),
        "top_p out of range": ({"top_p": 1.5}, 422, "top_p"),
        "negative temperature": ({"temperature": -1}, 422, "temperature"),
        "unknown policy": ({"policy": "telepathy"}, 422, "policy"),
        "option of another process": ({"method": "euler"}, 422, "method"),
        "option checked at the first step": ({"block_length": 7, "length": 16}, 422, "block_length"),
        "prompt longer than the context": ({"prompt": "a" * 40}, 422, "prompt"),
        "character outside the vocabulary": ({"prompt": "ROMEO: \u2603"}, 422, "prompt"),
        "infill and prompt together": ({"infill": "a [MASK] b", "prompt": "c"}, 422, "infill"),
        "template without a gap": ({"infill": "no gap"}, 422, "infill"),
        "unknown model": ({"model": "gpt-5"}, 422, "model"),
        "too many samples": ({"num_samples": 3}, 413, "num_samples"),
        "too many steps": ({"steps": 65}, 413, "steps"),
        "too long": ({"length": 25}, 413, "length"),
        "longer than the context leaves after the prompt": ({"prompt": "ROMEO: abcdefghij", "length": 20}, 422, "length"),
        "an option the sampler options refuse": ({"entropy_bound": 1.0, "policy": "ancestral"}, 422, "entropy_bound"),
        "too many gaps": ({"infill": "[MASK*25]"}, 413, "infill"),
        "body too large": ({"prompt": "x" * (1 << 20)}, 413, None),
    }


@pytest.mark.parametrize("route", ["/v1/generate", "/v1/generate/stream"])
def test_every_class_of_bad_input_gets_a_4xx_json_answer_and_the_server_keeps_serving(client, route):
    for case, (body, status, field) in bad_requests().items():
        if isinstance(body, bytes):
            answer = client.post(route, content=body, headers={"content-type": "application/json"})
        else:
            answer = client.post(route, json=body)
        assert answer.status_code == status, f"{case}: {answer.status_code} {answer.text}"
        assert answer.headers["content-type"] == "application/json", case
        error = answer.json()["error"]
        assert error["field"] == field, f"{case}: {error}"
        assert error["message"] and "\n" not in error["message"], case
        assert "--" not in error["message"], f"{case}: a command-line flag in an API answer: {error['message']}"
    assert client.get("/health").json()["queue"]["running"] == 0
    assert client.post(route, json={"length": 8, "steps": 4, "seed": 0}).status_code == 200


def test_a_full_queue_is_refused_with_429(models, monkeypatch):
    gate = threading.Event()
    slow_down(monkeypatch, models, gate=gate)
    app = create_app(models, Limits(workers=1, queue_size=1), web_page=False)

    async def scenario() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = {"length": 8, "steps": 4, "seed": 0}
            running = asyncio.create_task(client.post("/v1/generate", json=body))
            waiting = asyncio.create_task(client.post("/v1/generate", json=body))
            stats = app.state.server.pool.stats
            while stats()["running"] + stats()["waiting"] < 2:
                await asyncio.sleep(0.01)
            refused = await client.post("/v1/generate", json=body)
            assert refused.json()["error"]["type"] == "queue_full" and refused.headers["retry-after"]
            gate.set()
            return [refused.status_code, (await running).status_code, (await waiting).status_code]

    assert asyncio.run(scenario()) == [429, 200, 200]
    assert app.state.server.pool.stats()["refused"] == 1


def test_a_client_that_disconnects_cancels_its_generation(models, monkeypatch):
    gated = slow_down(monkeypatch, models, delay=0.05)
    app = create_app(models, LIMITS, web_page=False)
    with live_server(app) as url:
        body = {"length": 24, "steps": 64, "use_cache": False, "seed": 0}
        with httpx.stream("POST", f"{url}/v1/generate/stream", json=body, timeout=30) as response:
            lines = response.iter_lines()
            assert next(lines) == "event: step"
        deadline = time.monotonic() + 10
        while app.state.server.pool.stats()["cancelled"] < 1:
            assert time.monotonic() < deadline, "the generation was not cancelled"
            time.sleep(0.02)
        calls = gated.calls
        time.sleep(0.3)
        assert gated.calls == calls < 64  # stopped between two steps, long before the 64th
        assert httpx.get(f"{url}/health").json()["queue"]["running"] == 0
        assert httpx.post(f"{url}/v1/generate", json={"length": 8, "steps": 4}, timeout=30).status_code == 200


def test_a_generation_past_the_time_limit_gets_503(models, monkeypatch):
    slow_down(monkeypatch, models, delay=0.05)
    app = create_app(models, Limits(max_seconds=0.2), web_page=False)
    with TestClient(app) as client:
        started = time.monotonic()
        answer = client.post("/v1/generate", json={"length": 24, "steps": 64, "use_cache": False})
        assert answer.status_code == 503 and answer.json()["error"]["type"] == "time_limit"
        assert time.monotonic() - started < 2
        events = events_of(client.post("/v1/generate/stream", json={"length": 24, "steps": 64,
                                                                      "use_cache": False}).text)
        assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "time_limit"
        assert client.get("/health").json()["queue"]["timed_out"] == 2


def test_pool_runs_workers_queues_some_refuses_the_rest_and_passes_errors_on():
    pool = GenerationPool(Limits(workers=1, queue_size=1))
    gate = threading.Event()

    def gated_steps():
        assert gate.wait(timeout=10)
        yield from range(3)

    first = pool.submit(gated_steps)
    second = pool.submit(lambda: iter(range(2)))
    with pytest.raises(QueueFull):
        pool.submit(lambda: iter(()))
    assert pool.stats() == {"running": 1, "waiting": 1, "completed": 0, "cancelled": 0,
                                                "refused": 1, "failed": 0, "timed_out": 0}
    second.cancel()  # a client gone while waiting: it never runs
    gate.set()
    assert list(first) == [0, 1, 2]
    with pytest.raises(RunStopped):
        list(second)

    def broken():
        yield 1
        raise DDLMError("block length 7 does not divide the 16 generated positions")

    with pytest.raises(DDLMError, match="block length"):
        list(pool.submit(broken))
    stats = pool.stats()
    assert (stats["completed"], stats["cancelled"], stats["failed"], stats["running"], stats["waiting"]) == (1, 1, 1, 0, 0)

    endless = pool.submit(lambda: iter(range(10**9)))
    assert next(iter(endless)) == 0
    pool.shutdown()  # Ctrl-C: running generations stop at their next step, and say so
    with pytest.raises(RunStopped):
        list(endless)


def test_canvas_html_draws_a_grid_while_denoising_and_plain_text_when_finished(models):
    tokenizer = models.get(None).pipe.tokenizer
    pieces, mask, eos = TokenPieces(tokenizer), tokenizer.mask_id, tokenizer.eos_id
    a, b, less, newline, c = tokenizer.encode("ab<\nc")
    generated = [[False, True, True, True, True, True, True, True]]
    frame = Frame(step=2, tokens=[[a, b, mask, less, newline, c, eos, b]], generated=generated, new=[[2, 3]],
                  confidence=[[None, 0.95, None, 0.1, 0.5, None, None, None]], model_calls=2, seconds=0.5, noise=0.25)
    grid = canvas_html(frame, pieces, mask)
    assert '<span class="t given">a</span>' in grid  # the prompt
    assert '<span class="t c4">b</span>' in grid  # written earlier, sure
    assert '<span class="t m re">_</span>' in grid  # masked again by this step: a cell that wraps like text
    assert '<span class="t c0 new">&lt;</span>' in grid  # written this step, unsure, escaped
    assert '<span class="t c2">↵</span>' in grid and "\n" not in grid  # a line break in place: no line moves
    assert '<span class="t ">c</span>' in grid and '<span class="t eos">¶</span>' in grid
    frame.tokens[0][2], frame.noise = b, 0.0
    text = canvas_html(frame, pieces, mask)
    assert 'class="ddlm-canvas ddlm-text"' in text and 'class="t' not in text  # plain: no cells, no colours
    assert text.endswith('><b class="given">a</b>bb&lt;\nc<span class="eos" title="end of text">¶</span></div>')


def test_status_html_counts_the_steps_a_run_took_and_shows_its_seed():
    frame = Frame(step=7, tokens=[[1, 2]], generated=[[True, True]], new=[[1]], confidence=[[0.5, 0.5]],
                  model_calls=7, seconds=0.5, noise=0.5)
    assert ">step <b>7 of 16</b><" in status_html(frame, "denoising", 16, seed=3)
    done = status_html(frame, "done", 16, seed=3)
    assert ">done<" in done and "<b>7</b> steps" in done and " of 16" not in done and '<b class="seed">3</b>' in done


def test_serve_command_warns_when_exposed_and_explains_a_missing_extra(models, monkeypatch, capsys):
    import importlib.util

    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    serve(models, host="0.0.0.0", port=8123, limits=LIMITS)
    assert calls[0]["host"] == "0.0.0.0" and calls[0]["port"] == 8123
    assert "warning: serving on 0.0.0.0" in capsys.readouterr().err
    serve(models, host="127.0.0.1", port=8124, limits=LIMITS)
    assert "warning" not in capsys.readouterr().err

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real_find_spec(name, *a))
    assert main(["serve", "--model", models.get(None).source]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: ddlm serve needs gradio; install the web app's extra: pip install 'ddlm[app]'"


def test_serve_command_refuses_bad_limits_and_missing_models_in_one_line(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["serve", "--model", str(tmp_path), "--workers", "0"]) == 2
    assert "workers must be at least 1" in capsys.readouterr().err


def test_an_idle_page_queue_polls_at_most_twenty_times_a_second():
    """Gradio's Linux default polls every 1 ms (5% of a core for an idle server); the server slows it down."""
    import gradio as gr

    from ddlm.app.server import QUEUE_POLL_SECONDS, calm_queue

    with gr.Blocks() as page:
        gr.Markdown("idle")
    page.queue()
    assert page._queue.sleep_when_free < QUEUE_POLL_SECONDS  # the default this guards against
    calm_queue(page)
    assert page._queue.sleep_when_free >= QUEUE_POLL_SECONDS
    assert page._queue.progress_update_sleep_when_free >= 0.1


def test_a_request_tokenises_its_prompt_and_suffix_once(models, monkeypatch):
    model = models.get(None)
    calls, encode = [], model.pipe.tokenizer.encode
    monkeypatch.setattr(model.pipe.tokenizer, "encode", lambda text: calls.append(text) or encode(text))
    request = GenerationRequest(prompt="to be", suffix="the end", length=6, num_samples=2, options={"steps": 4, "seed": 0})
    _, steps = open_stream(model, request, LIMITS)
    last = list(steps)[-1]
    assert sorted(calls) == ["the end", "to be"]
    assert [text.startswith("to be") and text.endswith("the end") for text in last.texts] == [True, True]


def test_a_chat_request_writes_the_reply_in_the_fine_tuned_turns(models):
    """A model fine-tuned on chat turns (its summary's chat format) answers ``chat: true`` as ``pipe.generate(chat=True)``;
    a model without a chat format refuses it, naming the field."""
    plain = models.get(None)
    chat_pipe = copy.copy(plain.pipe)
    chat_pipe.summary = {**plain.pipe.summary, "chat": {"user": "ROMEO", "assistant": "JULIET",
                                                       "template": "{role}:\n{content}\n\n"}}
    served = Models([Model("chat", chat_pipe, "memory"), plain])
    with TestClient(create_app(served, LIMITS, web_page=False)) as client:
        cards = {card["name"]: card["chat"] for card in client.get("/v1/models").json()["models"]}
        assert cards == {"chat": True, plain.name: False}
        body = {"model": "chat", "prompt": "O Romeo", "chat": True, "length": 6, "steps": 6, "seed": 0}
        answer = client.post("/v1/generate", json=body).json()
        expected = chat_pipe.generate("O Romeo", chat=True, length=6, steps=6, seed=0)
        assert answer["texts"] == expected and expected[0].startswith("ROMEO:\nO Romeo\n\nJULIET:\n")
        refused = client.post("/v1/generate", json={**body, "model": plain.name})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "chat"
