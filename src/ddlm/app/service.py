"""What the API and the web page share: the loaded models, a request checked against the limits, and the run's results.

Nothing here knows HTTP or Gradio. A :class:`GenerationRequest` becomes a stream of
:class:`~ddlm.samplers.SamplerStep` (``DiffusionPipeline.stream`` with one validated
:class:`~ddlm.samplers.SamplerOptions`); bad input raises :class:`RequestError`, which
names the request field at fault and the HTTP status that says why.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddlm.app.limits import Limits
from ddlm.bundled import DEFAULT_MODEL, SERVED_FIRST, bundled_models
from ddlm.errors import DDLMError
from ddlm.eval.diversity import unigram_entropy
from ddlm.families import get_family
from ddlm.pipeline import DiffusionPipeline, resolve_model_directory
from ddlm.pipeline.canvas import with_length
from ddlm.samplers import SampleOutput, SamplerOptions, SamplerStep
from ddlm.samplers.block import steps_per_block
from ddlm.schema import check_integer
from ddlm.viz.tokens import step_views

CARD_FILE = "README.md"


class RequestError(Exception):
    """A request the server will not run: ``status`` 422 (invalid) or 413 (over a limit), naming ``field``."""

    def __init__(self, message: str, field: str | None, status: int = 422, kind: str = "invalid_value"):
        super().__init__(message)
        self.message, self.field, self.status, self.kind = message, field, status, kind

    def to_json(self) -> dict[str, Any]:
        return {"error": {"type": self.kind, "field": self.field, "message": self.message}}


@dataclass
class GenerationRequest:
    """One generation, as the API's JSON or the web page's form gives it.

    ``options``: the sampler options the caller set (fields of :class:`SamplerOptions`);
    the others keep the model's defaults. ``length`` None fills the context, up to the server's cap.
    """

    model: str | None = None
    prompt: str | None = None
    suffix: str | None = None
    infill: str | None = None
    num_samples: int = 1
    length: int | None = None
    stop_at_eos: bool = True
    chat: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Model:
    """A loaded model, the name clients pick it by, and its model card (the directory's README.md, if any)."""

    name: str
    pipe: DiffusionPipeline
    source: str
    model_card: str | None = None

    @property
    def process(self) -> str:
        return self.pipe.process.name

    def default_options(self) -> dict[str, Any]:
        """The sampler options that apply to this model's process, with the model's defaults."""
        return get_family(self.process).applicable(self.pipe.sampler_options())

    @property
    def held_out_nelbo(self) -> float | None:
        """The held-out NELBO the model card reports (its own evaluation), else the trainer's final validation."""
        summary = self.pipe.summary
        return summary.get("held_out_nelbo", summary.get("final_valid_nelbo"))

    def card(self) -> dict[str, Any]:
        """Process, schedule, size, tokenizer and the training summary (held-out NELBO included)."""
        pipe, config = self.pipe, self.pipe.model.config
        summary = {key: value for key, value in pipe.summary.items() if key != "run_config"}
        return {
            "name": self.name,
            "source": self.source,
            "process": pipe.process.to_dict(),
            "parameters": pipe.model.num_parameters(),
            "layers": config.n_layers,
            "d_model": config.d_model,
            "heads": config.n_heads,
            "context_length": config.context_length,
            "tokenizer": {"kind": pipe.tokenizer.kind, "vocab_size": pipe.tokenizer.vocab_size,
                          "mask_id": pipe.tokenizer.mask_id, "eos_id": pipe.tokenizer.eos_id,
                          "pad_id": pipe.tokenizer.pad_id},
            "held_out_nelbo": self.held_out_nelbo,
            "chat": pipe.has_chat_format,
            "training_summary": summary,
            "sampler_defaults": self.default_options(),
        }


class Models:
    """The models one server holds, by name; the first is the default."""

    def __init__(self, models: list[Model]):
        if not models:
            raise DDLMError("no model to serve; pass --model DIR")
        self.by_name = {model.name: model for model in models}

    @classmethod
    def load(cls, sources: list[str], device: str = "auto", precision: str = "auto",
             trust_remote_code: bool = False, compile_model: bool = False) -> Models:
        """Load model directories, bundled names or Hugging Face models (``trust_remote_code`` for those that
        ship their own code); without any, every installed bundled model."""
        if not sources:  # the installed bundled models, the best sampler first, else the default one, whose
            # loading says what is missing
            installed = sorted((model.name for model in bundled_models() if model.installed), key=lambda name: name != SERVED_FIRST)
            sources = installed or [DEFAULT_MODEL]
        models, names = [], set()
        for source in sources:
            name = unique_name(Path(source).name or source, names)
            names.add(name)
            directory = resolve_model_directory(source)
            pipe = DiffusionPipeline.from_pretrained(directory, device=device, precision=precision,
                                                     trust_remote_code=trust_remote_code, compile_model=compile_model)
            models.append(Model(name, pipe, source, read_model_card(directory)))
        return cls(models)

    @property
    def names(self) -> list[str]:
        return list(self.by_name)

    def get(self, name: str | None) -> Model:
        if name is None:
            return next(iter(self.by_name.values()))
        if name not in self.by_name:
            raise RequestError(f"unknown model {name!r}; this server has {', '.join(map(repr, self.by_name))}", "model")
        return self.by_name[name]


def read_model_card(directory: Path) -> str | None:
    """The model card in ``directory`` (README.md), without the metadata block a Hub card starts with."""
    path = directory / CARD_FILE
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.startswith("---\n") and "\n---\n" in text[4:]:
        text = text[4:].split("\n---\n", 1)[1]
    return text.strip() or None


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``... when two model directories share a folder name."""
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}-{number}"
    return candidate


def as_request_error(error: DDLMError) -> RequestError:
    """A library error as the API's and the web page's refusal, naming the field the error carries."""
    return RequestError(str(error), error.field)


def over_limit(name: str, value: int, cap: int) -> RequestError:
    return RequestError(f"{name} {value} is over this server's limit of {cap}; ask for {cap} or fewer",
                        name, 413, "over_limit")


def open_stream(model: Model, request: GenerationRequest, limits: Limits) -> tuple[SamplerOptions, Iterator[SamplerStep]]:
    """The run's options and steps, after every check that can be made before the first step (raises RequestError)."""
    if isinstance(request.num_samples, int) and request.num_samples > limits.max_samples:
        raise over_limit("num_samples", request.num_samples, limits.max_samples)
    try:
        given = {key: value for key, value in request.options.items() if value is not None}
        defaults = model.pipe.sampler_options()  # the model's, its step budget within the server's cap
        options = SamplerOptions.build(defaults, **{"steps": min(defaults.steps, limits.max_steps), **given})
        if options.steps > limits.max_steps:
            raise over_limit("steps", options.steps, limits.max_steps)
        rows = request_rows(model.pipe, request, limits)
        return options, model.pipe.stream_rows(rows, options, stop_at_eos=request.stop_at_eos)
    except DDLMError as error:
        raise as_request_error(error) from None


def room_between(pipe: DiffusionPipeline, prompt: str | None, suffix: str | None, chat: bool = False) -> int:
    """The positions the model's context leaves between ``prompt`` (a chat turn with ``chat``) and ``suffix``
    (DDLMError if they fill it)."""
    row = pipe.canvas_rows(prompt or None, 1, None, None, suffix or None, chat)[0]
    return sum(token is None for token in row)


def longest_length(pipe: DiffusionPipeline, prompt: str | None, suffix: str | None, limits: Limits,
                   chat: bool = False) -> int:
    """The longest ``length`` a request with ``prompt`` and ``suffix`` may ask for."""
    return length_cap(pipe, room_between(pipe, prompt, suffix, chat), limits)


def length_cap(pipe: DiffusionPipeline, room: int, limits: Limits) -> int:
    """The longest ``length`` given the ``room`` the context leaves (block diffusion slides past the context),
    within the server's cap."""
    return limits.max_length if getattr(pipe.process, "generates_past_context", False) else min(room, limits.max_length)


def request_rows(pipe: DiffusionPipeline, request: GenerationRequest, limits: Limits) -> list[list[int | None]]:
    """The canvas rows of a request, its texts tokenised once, within the context and the server's caps: the
    request's length, or what fills the context (up to the cap); an infill template's gaps set their own."""
    check_integer("num_samples", request.num_samples, minimum=1)
    if request.infill:
        row = pipe.canvas_rows(request.prompt or None, 1, request.length, request.infill, request.suffix or None,
                               request.chat)[0]
        gaps = sum(token is None for token in row)
        if gaps > limits.max_length:
            raise RequestError(f"the infill template has {gaps} gaps to fill, over this server's limit of "
                               f"{limits.max_length} tokens; use fewer [MASK]s", "infill", 413, "over_limit")
        return [row] * request.num_samples
    if isinstance(request.length, int) and request.length > limits.max_length:
        raise over_limit("length", request.length, limits.max_length)
    row = pipe.canvas_rows(request.prompt or None, 1, None, None, request.suffix or None, request.chat)[0]  # fills the context
    room = sum(token is None for token in row)
    longest = length_cap(pipe, room, limits)
    length = min(room, limits.max_length) if request.length is None else request.length
    if isinstance(length, int) and length > longest:
        given = "prompt and fixed ending" if request.suffix else "prompt"
        raise RequestError(f"length {length} does not fit: the model's context of {pipe.context_length} tokens "
                           f"leaves {longest} after the {given}; ask for {longest} or fewer", "length")
    return [with_length(row, length)] * request.num_samples


@dataclass
class RunResult:
    """What a finished run returns: texts, token ids, cost, seed and the options used."""

    model: str
    texts: list[str]
    token_ids: list[list[int]]
    model_calls: int
    seconds: float
    seed: int
    options: dict[str, Any]
    entropy: float  # mean unigram entropy (nats) of the generated tokens of each sample

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def timed(steps: Iterator[SamplerStep]) -> Iterator[tuple[SamplerStep, float]]:
    """Each step with the seconds spent computing the run so far."""
    started = time.perf_counter()
    for step in steps:
        yield step, time.perf_counter() - started


def run_result(model: Model, options: SamplerOptions, last_steps: list[SamplerStep], seconds: float) -> RunResult:
    """The result of a run of ``options`` from the last step of each of its batches."""
    pipe = model.pipe
    output = SampleOutput.of_stream(last_steps, pipe.tokenizer.pad_id)
    texts = [text for step in last_steps for text in step.texts]
    rows = range(output.tokens.shape[0])
    token_ids = [output.tokens[row][output.canvas.active[row]].tolist() for row in rows]
    generated = [output.tokens[row][output.canvas.generated[row]].tolist() for row in rows]
    used = get_family(pipe.process.name).applicable(dataclasses.replace(options, seed=output.seed))
    return RunResult(model.name, texts, token_ids, output.model_calls, round(seconds, 4), output.seed, used,
                     round(sum(map(unigram_entropy, generated)) / len(generated), 4))


def planned_steps(model: Model, options: SamplerOptions, generated: list[list[bool]]) -> int:
    """The steps a run of ``options`` plans for the ``generated`` positions of each sample's canvas (columns
    from the first): one per token left to right and with the first-hitting policy, else the step budget, for
    block diffusion its share per block times the blocks. A run may take fewer (a threshold or an entropy
    bound, a block whose positions are all revealed early) or, for block diffusion, one more where samples end."""
    process, longest = model.pipe.process, max(sum(row) for row in generated)
    if process.causal or ("policy" in model.default_options() and options.policy == "first-hitting"):
        return longest
    if process.name != "block":
        return options.steps
    blocks = {column // process.block_size for row in generated for column, filled in enumerate(row) if filled}
    return len(blocks) * steps_per_block(options.steps, process.block_size, longest)


def step_event(step: SamplerStep, seconds: float) -> dict[str, Any]:
    """One step as JSON: the canvas (token ids, MASK where still masked, and texts) and what changed."""
    views = step_views(step)
    revealed = [view.where(view.revealed) for view in views]
    confidence = None
    if step.confidence is not None:  # rounded, None where the sampler recorded none
        confidence = [[None if view.confidence[position] is None else round(view.confidence[position], 4)
                       for position in positions] for view, positions in zip(views, revealed)]
    return {
        "index": step.index,
        "first_sample": step.first_sample,
        "tokens": [view.tokens for view in views],
        "texts": step.texts,
        "revealed": revealed,
        "remasked": [view.where(view.remasked) for view in views],
        "confidence": confidence,
        "noise": round(float(step.noise), 6),
        "model_calls": step.model_calls,
        "seconds": round(seconds, 4),
    }
