"""The JSON API under ``/v1``, ``/health``, and the error answers every route shares.

Every error is JSON ``{"error": {"type", "field", "message"}}``: 422 for invalid values,
malformed JSON and wrong types, 413 beyond the server's limits, 429 when the queue is full,
503 when a generation runs past the time limit. None of them stops the server.

The request body is generated from the sampler options' declarations when the router is built, so
a family registered before then has its options in the body and in ``/openapi.json`` (this module
therefore evaluates its annotations eagerly: the routes' body type is a local class).
"""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from ddlm.app.limits import GenerationPool, Limits, QueueFull, Run, RunStopped, TimeLimitExceeded
from ddlm.app.service import (
    GenerationRequest,
    Model,
    Models,
    RequestError,
    as_request_error,
    open_stream,
    run_result,
    step_event,
    timed,
)
from ddlm.errors import DDLMError
from ddlm.families import offered_options, option_help
from ddlm.samplers import SamplerOptions, SamplerStep
from ddlm.schema import DeclaredOption

MAX_BODY_BYTES = 1 << 20

class CanvasFields(BaseModel):
    """What to generate; the sampler options are the other fields."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(None, description="a model name from GET /v1/models (default: the first)")
    prompt: str | None = Field(None, description="text the samples start with, kept fixed")
    suffix: str | None = Field(None, description="text fixed after the generated positions")
    infill: str | None = Field(None, description="a template with [MASK] or [MASK*n] gaps, instead of prompt and length")
    num_samples: int = Field(1, description="samples to draw")
    length: int | None = Field(None, description="tokens to generate (default: fill the context, up to the server's cap)")
    stop_at_eos: bool = Field(True, description="cut each sample's text at a generated end-of-text token")
    chat: bool = Field(False, description="the prompt is a user turn in the model's chat format (a chat model, or one "
                                          "fine-tuned on chat turns by ddlm finetune: see GET /v1/models)")


def option_field(declared: DeclaredOption) -> tuple[Any, Any]:
    """A request body field for a sampler option: its type, help, range and choices from its one declaration.

    The range and the choices are documented in the schema but checked by the options themselves, so
    that a bad value gets the same one-line error everywhere.
    """
    schema = {**(declared.option.bounds.json_schema() if declared.option.bounds else {}),
              **({"enum": list(declared.option.choices)} if declared.option.choices else {})}
    return declared.kind | None, Field(None, description=option_help(declared), json_schema_extra=schema or None)


def generate_body() -> type[BaseModel]:
    """The request body of the generation routes: the canvas fields and every registered sampler option."""
    return create_model("GenerateBody", __base__=CanvasFields,
                        __doc__="A generation request: the canvas and the sampler options.",
                        **{declared.name: option_field(declared) for declared in offered_options()})


def to_request(body: BaseModel) -> GenerationRequest:
    values = body.model_dump()
    canvas = {name: values[name] for name in CanvasFields.model_fields}
    options = {name: value for name, value in values.items() if name not in canvas and value is not None}
    return GenerationRequest(**canvas, options=options)


class GenerateAnswer(BaseModel):
    model: str
    texts: list[str] = Field(description="one text per sample, prompt included")
    token_ids: list[list[int]] = Field(description="each sample's token ids (given and generated)")
    model_calls: int
    seconds: float
    seed: int = Field(description="pass it back to repeat the run")
    options: dict[str, Any] = Field(description="the sampler options used, seed included")
    entropy: float = Field(description="mean unigram entropy (nats) of each sample's generated tokens")


class Server:
    """The models, the limits and the generation pool of one running server."""

    def __init__(self, models: Models, limits: Limits):
        self.models, self.limits, self.pool = models, limits, GenerationPool(limits)

    def start(self, body: BaseModel) -> tuple[Model, SamplerOptions, Run]:
        """Check a request and queue its generation (raises RequestError or QueueFull)."""
        request = to_request(body)
        model = self.models.get(request.model)
        options, steps = open_stream(model, request, self.limits)
        return model, options, self.pool.submit(lambda: timed(steps), loop=asyncio.get_running_loop())


def error_answer(status: int, kind: str, message: str, field: str | None = None, **headers: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "field": field, "message": message}}, status_code=status,
                        headers=headers or None)


QUEUE_FULL_MESSAGE = "the server is busy: every worker is generating and the queue is full; retry in a few seconds"
STOPPED_MESSAGE = "the generation was stopped before it finished (the server is shutting down); retry later"


def time_limit_message(limits: Limits) -> str:
    return (f"the generation ran past this server's limit of {limits.max_seconds:g} s; ask for fewer steps, "
            "samples or a shorter length")


def describe_validation_error(error: dict[str, Any]) -> tuple[str, str | None]:
    """A one-line message and the field for pydantic's first complaint about a request body."""
    location = [part for part in error.get("loc", ()) if part != "body"]
    field = location[0] if location and isinstance(location[0], str) else None
    kind = error.get("type", "")
    if kind == "json_invalid":
        reason = error.get("ctx", {}).get("error", "malformed")
        return f"the request body is not valid JSON ({reason}); send a JSON object such as {{\"prompt\": \"ROMEO:\"}}", None
    if kind in ("model_attributes_type", "dict_type", "model_type") or (kind == "missing" and field is None):
        return "the request body must be a JSON object such as {\"prompt\": \"ROMEO:\"}", None
    if kind == "extra_forbidden":
        known = ", ".join([*CanvasFields.model_fields, *(declared.name for declared in offered_options())])
        return f"unknown field {field!r}; the fields are {known}", field
    given = json.dumps(error.get("input"), default=str)[:80]
    return f"{field}: {error.get('msg', 'invalid value').lower()}, got {given}", field


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        message, field = describe_validation_error(error.errors()[0])
        kind = "invalid_json" if field is None and "JSON" in message else "invalid_value"
        return error_answer(422, kind, message, field)

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse(error.to_json(), status_code=error.status)

    @app.exception_handler(QueueFull)
    async def busy(request: Request, error: QueueFull) -> JSONResponse:
        return error_answer(429, "queue_full", QUEUE_FULL_MESSAGE, **{"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:
        return error_answer(500, "server_error", f"the generation failed ({type(error).__name__}: {error}); "
                            "the server keeps serving, please report this")

    app.add_middleware(BodySizeCap)


class BodySizeCap:
    """Answer 413 to a request whose body is over MAX_BODY_BYTES, before the app reads it.

    A declared Content-Length is checked at once; a body without one (chunked) is read here only until
    its chunks pass the cap, and what the client sends after the answer is dropped, never kept. Plain
    ASGI: responses, the event stream too, pass untouched.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            declared = dict(scope["headers"]).get(b"content-length")
            if declared is not None:
                over = declared.isdigit() and int(declared) > MAX_BODY_BYTES
            else:  # chunked, or no body: read here, up to the cap
                messages = await read_capped(receive, MAX_BODY_BYTES)
                over, receive = messages is None, replaying(messages or [], receive)
            if over:
                answer = error_answer(413, "over_limit", f"the request body is over {MAX_BODY_BYTES} bytes; "
                                      "send a shorter prompt or template")
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_capped(receive: Callable[[], Awaitable[dict]], limit: int) -> list[dict] | None:
    """A request's messages up to the end of its body, or None as soon as the body passes ``limit`` bytes."""
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":  # the client went away
            return messages
        size += len(message.get("body", b""))
        if size > limit:
            return None
        if not message.get("more_body", False):
            return messages


def replaying(messages: list[dict], receive: Callable[[], Awaitable[dict]]) -> Callable[[], Awaitable[dict]]:
    """A ``receive`` that gives ``messages`` again, then what ``receive`` gives (a disconnect, say)."""
    pending = list(messages)

    async def replay() -> dict:
        return pending.pop(0) if pending else await receive()

    return replay


def sse(event: str, data: dict[str, Any]) -> str:
    """One Server-Sent Event."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def api_router(server: Server) -> APIRouter:
    router = APIRouter()
    GenerateBody = generate_body()  # noqa: N806 (a model class): the families registered now

    @router.get("/health", tags=["server"])
    async def health() -> dict[str, Any]:
        """Whether the server is up, its models, its queue and its limits."""
        return {"status": "ok", "models": server.models.names, "queue": server.pool.stats(),
                "limits": asdict(server.limits)}

    @router.get("/v1/models", tags=["models"])
    async def models() -> dict[str, Any]:
        """Each model's card: process, schedule, size, tokenizer, training summary and sampler defaults."""
        return {"default": server.models.names[0], "models": [model.card() for model in server.models.by_name.values()]}

    @router.post("/v1/generate", response_model=GenerateAnswer, tags=["generation"],
                 responses={413: {"description": "over a limit"}, 422: {"description": "invalid request"},
                            429: {"description": "queue full"}, 503: {"description": "time limit"}})
    async def generate(body: GenerateBody, request: Request):  # type: ignore[valid-type]
        """Generate samples and answer once they are finished."""
        model, options, run = server.start(body)
        last: dict[int, SamplerStep] = {}
        seconds = 0.0
        try:
            async for step, elapsed in run:
                last[step.first_sample], seconds = step, elapsed
                if await request.is_disconnected():
                    run.cancel()
                    return error_answer(499, "cancelled", "the client went away; the generation was stopped")
        except DDLMError as error:  # an option the sampler checks at its first step
            raise as_request_error(error) from None
        except TimeLimitExceeded:
            return error_answer(503, "time_limit", time_limit_message(server.limits))
        except RunStopped:
            return error_answer(503, "stopped", STOPPED_MESSAGE)
        return run_result(model, options, list(last.values()), seconds).to_json()

    @router.post("/v1/generate/stream", tags=["generation"],
                 responses={200: {"content": {"text/event-stream": {}},
                                  "description": "`event: step` per step (canvas token ids, texts, revealed and "
                                                 "remasked positions, noise, model calls), then `event: result` "
                                                 "(as /v1/generate) or `event: error`"}})
    async def generate_stream(body: GenerateBody):  # type: ignore[valid-type]
        """Generate samples, answering with one Server-Sent Event per denoising step, then the result."""
        model, options, run = server.start(body)
        steps = run.__aiter__()
        try:
            first = await anext(steps)  # an option the sampler refuses is still a 422, before the stream starts
        except DDLMError as error:
            raise as_request_error(error) from None
        except TimeLimitExceeded:
            return error_answer(503, "time_limit", time_limit_message(server.limits))
        except RunStopped:
            return error_answer(503, "stopped", STOPPED_MESSAGE)

        async def events() -> AsyncIterator[str]:
            last: dict[int, SamplerStep] = {}
            item = first
            try:
                while item is not None:
                    step, seconds = item
                    last[step.first_sample] = step
                    yield sse("step", step_event(step, seconds))
                    item = await anext(steps, None)
                result = run_result(model, options, list(last.values()), seconds)
                yield sse("result", result.to_json())
            except TimeLimitExceeded:
                yield sse("error", {"error": {"type": "time_limit", "field": None,
                                              "message": time_limit_message(server.limits)}})
            except RunStopped:
                yield sse("error", {"error": {"type": "stopped", "field": None, "message": STOPPED_MESSAGE}})
            finally:  # the client went away (or the stream ended): stop the generation
                run.cancel()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return router
