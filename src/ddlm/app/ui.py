"""The web page (Gradio, mounted at /): watch the masks resolve, scrub back, compare two settings, see the noise.

Every generation goes through the server's :class:`~ddlm.app.limits.GenerationPool`, as
the API's do; the page only turns steps into HTML (:mod:`ddlm.app.render`). :class:`Page`
builds the tabs and holds their event handlers.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from ddlm.app.api import QUEUE_FULL_MESSAGE, STOPPED_MESSAGE, Server, time_limit_message
from ddlm.app.limits import Limits, QueueFull, Run, RunStopped, TimeLimitExceeded
from ddlm.app.render import CSS, EMPTY_CANVAS, LEGEND, Frame, FrameMaker, canvas_html, status_html
from ddlm.app.service import (
    GenerationRequest,
    Model,
    RequestError,
    as_request_error,
    longest_length,
    open_stream,
    planned_steps,
    run_result,
    timed,
)
from ddlm.errors import DDLMError
from ddlm.families import offered_options, option_help, option_table
from ddlm.samplers import SamplerOptions, SamplerStep
from ddlm.schema import DeclaredOption
from ddlm.viz.animation import denoising_frames, legend_for, save_animation
from ddlm.viz.tokens import TokenPieces

__all__ = ["CSS", "build_page"]

FRAME_SECONDS = 0.04  # at most 25 redraws a second, so a fast model's run can still be watched
SEED_RANGE = 2**32  # the seeds the page draws: a browser's number box holds them exactly
DEFAULT_PROMPT, DEFAULT_TEMPLATE = "ROMEO:", "To be, or [MASK*12], that is"
EXAMPLE_PROMPTS = [DEFAULT_PROMPT, "JULIET:\nO Romeo, Romeo!", "First Citizen:\nBefore we proceed any further,",
                   "KING RICHARD III:\nNow is the winter of"]
EXAMPLE_TEMPLATES = [DEFAULT_TEMPLATE, "ROMEO:\nBut soft, what light through [MASK*16] breaks?",
                     "HAMLET:\n[MASK*40]\nOPHELIA:\nGood my lord,"]

INTRO = """
# ddlm: watch a diffusion language model write
A diffusion language model need not write left to right. It starts from a canvas of **masked
positions** (grey boxes) and, step by step, fills some of them in, in the order its sampler's
policy chooses, each time looking at everything written so far (a block-diffusion model does so
a few positions at a time, block after block). Type a prompt, press **Generate** and watch the
masks resolve; then scrub back through the steps, or compare two settings on the same seed.
"""

API_HELP = """
### The same over HTTP
```bash
curl -s localhost:8000/v1/generate -H 'content-type: application/json' \\
     -d '{"prompt": "ROMEO:", "length": 64, "steps": 32, "seed": 0}'
curl -sN localhost:8000/v1/generate/stream -H 'content-type: application/json' \\
     -d '{"infill": "To be, or [MASK*12], that is", "steps": 12}'   # one event per step
```
`GET /v1/models` lists the models and their sampler defaults, `GET /health` the queue.
The full schema is at [/docs](/docs).
"""

def option_input(declared: DeclaredOption, step_cap: int, default: Any, **keywords: Any) -> gr.components.Component:
    """The page's control for one sampler option, from its declaration: a checkbox, a list of choices, a slider
    over its range, or a number box, set to ``default``; an option that is off by default shows its 'off' value
    (0, or 1 for top-p)."""
    option, name = declared.option, declared.name
    shown = {"label": name.replace("_", " "), "info": option_info(declared, default), "elem_id": f"option-{name}",
             "value": control_value(declared, default), **keywords}
    bounds = option.bounds
    if declared.kind is bool:
        return gr.Checkbox(**shown)
    if option.choices is not None:
        return gr.Dropdown([*(["off"] if option.off == "off" else []), *option.choices], **shown)
    if name == "steps":  # the server caps the step budget
        return gr.Slider(bounds.low, step_cap, step=1, **{**shown, "value": min(shown["value"], step_cap)})
    high = bounds.high if bounds is not None and bounds.high is not None else option.slider_max
    if declared.kind is float and high is not None:
        step = option.slider_step
        low = bounds.low + step if bounds.low_open and option.off in (None, high) else bounds.low
        return gr.Slider(low, high, step=step, **shown)
    return gr.Number(precision=0 if declared.kind is int else None, minimum=0 if option.off == 0 else bounds.low,
                     **shown)


def option_info(declared: DeclaredOption, default: Any) -> str:
    """The help text under an option's control, naming ``default`` (the chosen model's) as the default."""
    off = declared.option.off
    return option_help(replace(declared, default=default)) + (f"; {off}: off" if off not in (None, "off") else "")


def option_inputs(step_cap: int, offered: set[str], defaults: dict[str, Any] | None = None
                  ) -> dict[str, gr.components.Component]:
    """One control per sampler option but the seed (the page has its own), shown if ``offered``, set to its value
    in ``defaults`` (a model's: ``Model.default_options()``) or its declared default, named in its help text."""
    defaults = defaults or {}
    return {declared.name: option_input(declared, step_cap, defaults.get(declared.name, declared.default),
                                        visible=declared.name in offered)
            for declared in offered_options() if declared.name != "seed"}


def control_value(declared: DeclaredOption, default: Any) -> Any:
    """What an option's control shows for ``default``: the value, or the option's 'off' value for None."""
    return declared.option.off if default is None else default


def control_values(model: Model) -> dict[str, Any]:
    """What each control of an option ``model`` takes shows: the model's default (its sampler_config.json's, else
    the declared one), an option that is off as its 'off' value."""
    table = option_table()
    return {name: control_value(table[name], value) for name, value in model.default_options().items()}


def controls_for(model: Model) -> set[str]:
    """The sampler options the page offers for ``model``: those of its process, less the step budget for a
    model that writes one token per step."""
    names = set(model.default_options())
    if model.pipe.process.causal:
        names.discard("steps")
    return names


def options_from_inputs(model: Model, values: dict[str, Any]) -> dict[str, Any]:
    """The sampler options the page's inputs set, 'off' values dropped, those the model does not take left out."""
    offered, table = controls_for(model) | {"seed"}, option_table()
    return {name: int(value) if table[name].kind is int else value for name, value in values.items()
            if name in offered and value is not None and value != table[name].option.off}


def seed_of(value: float | None) -> int:
    """The seed a run uses: the one typed, or a fresh one (shown, so that the run can be repeated)."""
    return secrets.randbelow(SEED_RANGE) if value is None else int(value)


def room_left(models: list[Model], prompt: str | None, suffix: str | None, limits: Limits,
              chat: bool = False) -> int | None:
    """The longest length every model's context leaves around ``prompt`` (a chat turn with ``chat``) and
    ``suffix`` (None when they fill it or do not encode: the run then says why)."""
    try:
        return min(longest_length(model.pipe, prompt, suffix, limits, chat) for model in models)
    except DDLMError:
        return None


def fitted_length(model: Model, prompt: str | None, suffix: str | None, length: float, limits: Limits,
                  chat: bool = False) -> int:
    """``length``, no longer than the room the prompt and ending leave."""
    room = room_left([model], prompt, suffix, limits, chat)
    return int(length) if room is None else min(int(length), room)


def length_slider(models: list[Model], prompt: str | None, suffix: str | None, length: float, limits: Limits) -> Any:
    """The length slider bounded by the room the prompt and ending leave in every model's context."""
    room = room_left(models, prompt, suffix, limits)
    if room is None:
        return gr.skip()
    return gr.Slider(maximum=max(2, room), value=min(int(length), room))  # a slider needs two values


def initial_length_slider(model: Model, value: int, limits: Limits, **keywords: Any) -> gr.Slider:
    """A length slider for ``model`` and the page's first prompt, so that nothing changes when the page loads."""
    room = room_left([model], DEFAULT_PROMPT, None, limits) or longest_length(model.pipe, None, None, limits)
    return gr.Slider(1, max(2, room), value=min(value, room), step=1, **keywords)


@dataclass
class RunControl:
    """A browser tab's handle on its current generation, so that Stop can end it."""

    run: Run | None = None
    stop_requested: bool = False

    def start(self, run: Run) -> None:
        self.run, self.stop_requested = run, False

    def stop(self) -> None:
        self.stop_requested = True
        if self.run is not None:
            self.run.cancel()


@dataclass
class LastRun:
    """What the page keeps of a tab's last run (finished or stopped): its frames to scrub, its steps for the GIF."""

    model: str
    seed: int
    total_steps: int | None = None
    frames: list[Frame] = field(default_factory=list)
    steps: list[SamplerStep] = field(default_factory=list)


def steps_of(run: Run, limits: Limits, control: RunControl | None = None) -> Iterator[Any]:
    """The run's items until it ends or the tab stops it; its errors become the page's error toast."""
    try:
        yield from run
    except DDLMError as error:
        raise gr.Error(as_request_error(error).message) from None
    except TimeLimitExceeded:
        raise gr.Error(time_limit_message(limits)) from None
    except RunStopped:
        if control is None or not control.stop_requested:
            raise gr.Error(STOPPED_MESSAGE) from None


class Pacer:
    """Keeps redraws at most one every FRAME_SECONDS, so that a fast model's run can still be watched."""

    def __init__(self) -> None:
        self.shown = 0.0

    def wait(self) -> None:
        time.sleep(max(0.0, FRAME_SECONDS - (time.monotonic() - self.shown)))
        self.shown = time.monotonic()


def forward_frame(model: Model, text: str, t: float, seed: int) -> tuple[Frame | None, str]:
    """The text corrupted by the model's own forward process at time ``t``, and a line saying how much."""
    process, tokenizer = model.pipe.process, model.pipe.tokenizer
    if not hasattr(process, "corrupt"):
        return None, f"The {process.name} model has no forward noising process: it writes left to right."
    ids = tokenizer.encode(text)[: model.pipe.context_length]
    if not ids:
        return None, "Type a text to corrupt."
    x0 = torch.tensor([ids], device=model.pipe.device)
    generator = torch.Generator(device=model.pipe.device).manual_seed(int(seed or 0))
    xt = process.corrupt(x0, torch.tensor([float(t)], dtype=torch.float64, device=x0.device), generator)[0]
    changed = (xt != x0[0]).nonzero().flatten().tolist()
    replaced = [position for position in changed if int(xt[position]) != tokenizer.mask_id]  # SEDD uniform
    count = len(ids)
    frame = Frame(step=0, tokens=[xt.tolist()], generated=[[True] * count], new=[replaced], confidence=[[None] * count],
                  model_calls=0, seconds=0.0, noise=len(changed) / count)
    return frame, (f"t = {t:.2f}: {len(changed)} of {count} tokens corrupted ({len(changed) / count:.0%}). "
                   "The model is trained to undo exactly this, from any t.")


def card_markdown(model: Model) -> str:
    """The model card: the model directory's README.md, else one written from its configuration and summary."""
    if model.model_card:
        return model.model_card
    card = model.card()
    summary, nelbo, tokenizer = card["training_summary"], card["held_out_nelbo"], card["tokenizer"]
    schedule = card["process"].get("schedule")
    if isinstance(schedule, dict):
        schedule = schedule.get("name")
    rows = {
        "process": card["process"]["name"] + (f", {schedule} noise schedule" if schedule else ""),
        "backbone": f"{card['parameters']:,} parameters: {card['layers']} layers, width {card['d_model']}, "
                    f"{card['heads']} heads, context {card['context_length']} tokens",
        "tokenizer": f"{tokenizer['kind']}, {tokenizer['vocab_size']:,} ids",
        "held-out NELBO": f"**{nelbo:.4f} nats/token**" if nelbo is not None else "not recorded",
        "training": training_line(summary),
        "machine": summary.get("machine", "not recorded"),
        "loaded from": f"`{card['source']}`",
    }
    table = "\n".join(f"| {name} | {value} |" for name, value in rows.items())
    return f"# {card['name']}\n\nThis model directory has no model card (README.md).\n\n| | |\n|---|---|\n{table}\n"


def training_line(summary: dict[str, Any]) -> str:
    """The training summary in words: steps, tokens, time and precision."""
    parts = []
    if "steps" in summary:
        parts.append(f"{summary['steps']:,} steps")
    if "tokens" in summary:
        parts.append(f"{summary['tokens']:,} tokens")
    if "train_seconds" in summary:
        seconds = summary["train_seconds"]
        parts.append(f"{seconds / 60:,.0f} minutes" if seconds >= 120 else f"{seconds:.0f} seconds")
    if "precision" in summary:
        parts.append(f"{summary['precision']} precision")
    return ", ".join(parts) or "no training summary"


def interleave(streams: list[Iterator[Any]]) -> Iterator[tuple[int, Any]]:
    """(which, item) from several iterators in turn, until all are spent: two runs advancing together."""
    active = list(enumerate(streams))
    while active:
        for entry in list(active):
            which, stream = entry
            item = next(stream, None)
            if item is None:
                active.remove(entry)
            else:
                yield which, item


class Page:
    """The page's tabs and their event handlers, for one server's models."""

    def __init__(self, server: Server):
        self.server, self.models, self.limits = server, server.models, server.limits
        self.step_cap = min(self.limits.max_steps, 512)
        self.piece_tables: dict[str, TokenPieces] = {}
        self.option_names: list[str] = []  # the sampler option inputs, in their order on the page
        self.gif_folder = tempfile.TemporaryDirectory(prefix="ddlm-gifs-")  # removed when the server exits

    def pieces(self, model: Model) -> TokenPieces:
        return self.piece_tables.setdefault(model.name, TokenPieces(model.pipe.tokenizer))

    def canvas(self, frame: Frame | None, model: Model, empty: str = EMPTY_CANVAS) -> str:
        return canvas_html(frame, self.pieces(model), model.pipe.tokenizer.mask_id, empty)

    def submit(self, model: Model, request: GenerationRequest) -> tuple[SamplerOptions, Run]:
        """Check and queue a run; a refusal becomes the page's error toast."""
        try:
            options, steps = open_stream(model, request, self.limits)
            return options, self.server.pool.submit(lambda: timed(steps))
        except RequestError as error:
            raise gr.Error(error.message) from None
        except QueueFull:
            raise gr.Error(QUEUE_FULL_MESSAGE) from None

    # ----- the page -----

    def build(self) -> gr.Blocks:
        first = self.models.get(None)
        with gr.Blocks(title="ddlm: watch a diffusion language model write", delete_cache=(3600, 3600)) as page:
            gr.Markdown(INTRO)
            model_name = gr.Dropdown(self.models.names, value=first.name, label="Model",
                                     visible=len(self.models.names) > 1, elem_id="model")
            with gr.Tab("Generate"):
                prompt, suffix, length, chat, options = self.generate_tab(model_name)
            with gr.Tab("Compare"):
                self.compare_tab()
            with gr.Tab("Forward process"):
                self.forward_tab(page, model_name)
            with gr.Tab("Model card"):
                card = gr.Markdown(card_markdown(first), elem_id="card")
            with gr.Tab("API"):
                gr.Markdown(API_HELP)
            switched = [card, length, chat, *options.values()]
            model_name.change(self.switch_model, [model_name, prompt, suffix, length], switched, show_progress="hidden")
        return page

    def switch_model(self, name: str, prompt: str, suffix: str, length: float) -> list[Any]:
        """A model chosen: its card, the room its context leaves, its chat format, and the sampler options it takes,
        set to its defaults."""
        model = self.models.get(name)
        offered, chat, defaults, table = controls_for(model), model.pipe.has_chat_format, model.default_options(), option_table()
        values = {option: control_value(table[option], default) for option, default in defaults.items()}
        shown = [gr.update(visible=True, value=min(values[option], self.step_cap) if option == "steps" else values[option],
                           info=option_info(table[option], defaults[option]))
                 if option in offered else gr.update(visible=False) for option in self.option_names]
        return [card_markdown(model), length_slider([model], prompt, suffix, length, self.limits),
                gr.update(visible=chat, value=chat), *shown]

    # ----- generate -----

    def generate_tab(self, model_name: gr.Dropdown) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        first = self.models.get(None)
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                mode = gr.Radio(["prompt", "infill template"], value="prompt", label="Write from", elem_id="mode")
                with gr.Column(elem_id="prompt-fields") as prompt_fields:
                    prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt (kept fixed; the model writes after it)", lines=2,
                                        elem_id="prompt")
                    gr.Examples([[text] for text in EXAMPLE_PROMPTS], [prompt], label="Example prompts")
                    chat = gr.Checkbox(first.pipe.has_chat_format, visible=first.pipe.has_chat_format, elem_id="chat",
                                       label="chat: the prompt is a message, the model writes the reply",
                                       info="in the turns the model was fine-tuned on (ddlm finetune) or its chat template")
                    suffix = gr.Textbox("", label="Fixed ending (optional; the model writes towards it)",
                                        elem_id="suffix")
                    length = initial_length_slider(first, 128, self.limits, label="length (tokens to write)",
                                                   info="at most what the model's context leaves after the prompt",
                                                   elem_id="length")
                with gr.Column(visible=False, elem_id="template-fields") as template_fields:
                    template = gr.Textbox(DEFAULT_TEMPLATE, label="Template", lines=2, elem_id="template",
                                          info="[MASK] is one token to fill, [MASK*n] is n of them")
                    gr.Examples([[text] for text in EXAMPLE_TEMPLATES], [template], label="Example templates")
                with gr.Row():
                    samples = gr.Slider(1, min(self.limits.max_samples, 4), value=1, step=1, label="samples",
                                        elem_id="samples")
                    seed = gr.Number(0, precision=0, minimum=0, label="seed (blank: a fresh one, shown above the text)",
                                     elem_id="seed")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", elem_id="stop")
                with gr.Accordion("Sampler options (the model's defaults)", open=False, elem_id="options"):
                    options = option_inputs(self.step_cap, controls_for(first), first.default_options())
                    self.option_names = list(options)
            with gr.Column(scale=3, min_width=300):
                status = gr.HTML(status_html(None, note="Press Generate to start."), elem_id="status")
                canvas = gr.HTML(self.canvas(None, first), elem_id="canvas")
                gr.HTML(LEGEND)
                scrub = gr.Slider(1, 2, value=1, step=1, label="scrub through the steps of the last run",
                                  visible=False, elem_id="scrub")
                make_gif = gr.Button("Make a GIF of this run (sample 1)", visible=False, elem_id="make-gif")
                gif = gr.Image(type="filepath", format="gif", label="GIF of the run", visible=False,
                               buttons=["download"], elem_id="gif")
        control, last_run = gr.State(RunControl()), gr.State(None)

        generate.click(
            self.generate, [control, model_name, mode, prompt, suffix, chat, template, length, samples, seed,
                            *options.values()],
            [canvas, status, scrub, make_gif, gif, last_run], concurrency_limit=None, show_progress="hidden")
        stop.click(RunControl.stop, control, None, concurrency_limit=None)
        make_gif.click(self.write_gif, last_run, gif, concurrency_limit=1)
        scrub.input(self.show_frame, [scrub, last_run], [canvas, status], show_progress="hidden")
        mode.change(lambda chosen: (gr.update(visible=chosen == "prompt"), gr.update(visible=chosen != "prompt")),
                    mode, [prompt_fields, template_fields])
        for text in (prompt, suffix):
            text.change(self.bound_length, [model_name, prompt, suffix, length], length, show_progress="hidden")
        return prompt, suffix, length, chat, options

    def bound_length(self, name: str, prompt: str, suffix: str, length: float) -> Any:
        return length_slider([self.models.get(name)], prompt, suffix, length, self.limits)

    def generate(self, control: RunControl, name: str, mode: str, prompt: str, suffix: str, chat: bool, template: str,
                 length: float, samples: float, seed_value: float | None, *option_values: Any) -> Iterator[tuple]:
        """Run a generation, drawing each step that changes the canvas, then its end: done, stopped or failed."""
        model = self.models.get(name)
        seed = seed_of(seed_value)
        values = {**dict(zip(self.option_names, option_values)), "seed": seed}
        chat = bool(chat) and model.pipe.has_chat_format
        canvas_fields = ({"infill": template} if mode != "prompt" else
                         {"prompt": prompt, "suffix": suffix, "chat": chat,
                          "length": fitted_length(model, prompt, suffix, length, self.limits, chat)})
        request = GenerationRequest(model=model.name, num_samples=int(samples),
                                    options=options_from_inputs(model, values), **canvas_fields)
        options, run = self.submit(model, request)
        control.start(run)
        last = LastRun(model.name, seed)
        yield (self.canvas(None, model, "Waiting for a free worker..."), status_html(None, "queued", seed=seed),
               gr.Slider(visible=False), gr.Button(visible=False), gr.Image(visible=False), None)
        make_frame, pacer = FrameMaker(), Pacer()
        try:
            for step, seconds in steps_of(run, self.limits, control):
                if control.stop_requested:
                    break
                frame = make_frame(step, seconds)
                if last.total_steps is None:  # the plan is fixed by the first frame's layout
                    last.total_steps = planned_steps(model, options, frame.generated)
                last.frames.append(frame)
                last.steps.append(step)
                if any(frame.new):  # steps that change nothing are not drawn
                    pacer.wait()
                    yield (self.canvas(frame, model), status_html(frame, "denoising", last.total_steps, seed),
                           *[gr.skip()] * 4)
        except gr.Error as error:
            yield self.run_end(model, last, "failed", note=error.message)
            raise
        yield self.run_end(model, last, "stopped" if control.stop_requested else "done")

    def run_end(self, model: Model, last: LastRun, state: str, note: str = "") -> tuple:
        """The page at a run's end: its last frame, its status, the scrub slider and the GIF button."""
        frame = last.frames[-1] if last.frames else None
        count = len(last.frames)
        scrub = (gr.Slider(1, count, value=count, step=1, visible=True) if count > 1 else gr.Slider(visible=False))
        return (self.canvas(frame, model, "Stopped before the first step."),
                status_html(frame, state, last.total_steps, last.seed, note),
                scrub, gr.Button(visible=count > 0), gr.Image(visible=False), last)

    def show_frame(self, index: float, last: LastRun | None) -> tuple[Any, Any]:
        """One frame of the last run, chosen with the scrub slider."""
        if not last or not last.frames:
            return gr.skip(), gr.skip()
        position = min(max(int(index), 1), len(last.frames))
        frame = last.frames[position - 1]
        return (self.canvas(frame, self.models.get(last.model)),
                status_html(frame, "replay", last.total_steps, last.seed, f"frame {position} of {len(last.frames)}"))

    def write_gif(self, last: LastRun | None) -> Any:
        """The last run (its first sample) as an animated GIF, shown on the page and offered for download."""
        if not last or not last.steps:
            raise gr.Error("generate something first")
        tokenizer = self.models.get(last.model).pipe.tokenizer
        with tempfile.NamedTemporaryFile(dir=self.gif_folder.name, prefix="ddlm-denoising-", suffix=".gif") as named:
            path = Path(named.name)  # a fresh name; the file itself is written atomically below
        frames = denoising_frames(last.steps, tokenizer, "confidence", total_steps=last.total_steps)
        save_animation(frames, path, legend_for("confidence"))
        return gr.Image(value=str(path), visible=True)

    # ----- forward process -----

    def forward_tab(self, page: gr.Blocks, model_name: gr.Dropdown) -> None:
        gr.Markdown("Training corrupts text with the model's own forward process; generation runs it backwards. "
                    "Move the slider from clean (0) to pure noise (1).")
        text = gr.Textbox("To be, or not to be, that is the question", label="Text", elem_id="forward-text")
        with gr.Row():
            noise_level = gr.Slider(0, 1, value=0.5, step=0.01, label="noise level t", elem_id="noise")
            seed = gr.Number(0, precision=0, minimum=0, label="seed")
        status = gr.HTML()
        canvas = gr.HTML(elem_id="forward-canvas")
        inputs = [model_name, text, noise_level, seed]
        for trigger in (text.change, noise_level.change, seed.change, model_name.change, page.load):
            trigger(self.show_forward, inputs, [status, canvas], show_progress="hidden")

    def show_forward(self, name: str, text: str, t: float, seed: float | None) -> tuple[str, str]:
        model = self.models.get(name)
        frame, note = forward_frame(model, text, t, seed)
        return status_html(None, note=note), self.canvas(frame, model, "")

    # ----- compare -----

    def compare_tab(self) -> None:
        first = self.models.get(None)
        gr.Markdown("Two settings (or two models) on the same prompt and seed, run together.")
        with gr.Row():
            prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", scale=3, elem_id="compare-prompt")
            length = initial_length_slider(first, 64, self.limits, label="length", scale=2, elem_id="compare-length")
            seed = gr.Number(0, precision=0, minimum=0, label="seed (blank: a fresh one)", scale=1,
                             elem_id="compare-seed")
        with gr.Row():
            run_both = gr.Button("Run both", variant="primary", elem_id="compare")
            stop_both = gr.Button("Stop", elem_id="compare-stop")
        control = gr.State(RunControl())
        settings, views, offered, table = [], [], controls_for(first), option_table()
        with gr.Row():
            for side, policy, steps in (("a", "ancestral", 64), ("b", "confidence", 16)):
                with gr.Column(min_width=280):
                    gr.Markdown(f"#### Setting {side.upper()}")
                    with gr.Row():
                        side_model = gr.Dropdown(self.models.names, value=first.name, label="model",
                                                 visible=len(self.models.names) > 1, elem_id=f"compare-model-{side}")
                        side_policy, side_steps, side_temperature = (
                            option_input(table[name], self.step_cap, value, visible=name in offered,
                                         elem_id=f"compare-{name}-{side}", info=None)
                            for name, value in (("policy", policy), ("steps", steps), ("temperature", 1.0)))
                    views += [gr.HTML(status_html(None), elem_id=f"compare-status-{side}"),
                              gr.HTML(self.canvas(None, first, "Press Run both."), elem_id=f"compare-canvas-{side}")]
                    settings += [side_model, side_policy, side_steps, side_temperature]
                    side_model.change(self.switch_side, side_model, [side_policy, side_steps], show_progress="hidden")
        gr.HTML(LEGEND)
        run_both.click(self.compare, [control, prompt, length, seed, *settings], views, concurrency_limit=None,
                       show_progress="hidden")
        stop_both.click(RunControl.stop, control, None, concurrency_limit=None)
        side_models = settings[0::4]
        for trigger in (prompt.change, *[model.change for model in side_models]):
            trigger(self.bound_compare_length, [prompt, length, *side_models], length, show_progress="hidden")

    def switch_side(self, name: str) -> tuple[Any, Any]:
        """Show a side's policy and steps only for a model that takes them."""
        offered = controls_for(self.models.get(name))
        return gr.update(visible="policy" in offered), gr.update(visible="steps" in offered)

    def bound_compare_length(self, prompt: str, length: float, *names: str) -> Any:
        return length_slider([self.models.get(name) for name in names], prompt, None, length, self.limits)

    def compare(self, control: RunControl, prompt: str, length: float, seed_value: float | None,
                *side_values: Any) -> Iterator[list[str]]:
        """Run both settings on one seed, a step of each in turn, until done or stopped; each side's status counts
        its own steps."""
        seed = seed_of(seed_value)
        sides = []
        for name, policy, steps, temperature in (side_values[:4], side_values[4:]):
            model = self.models.get(name)
            request = GenerationRequest(
                model=model.name, prompt=prompt, length=fitted_length(model, prompt, None, length, self.limits),
                options=options_from_inputs(model, {"policy": policy, "steps": steps, "temperature": temperature,
                                                    "seed": seed}))
            try:
                options, stream = open_stream(model, request, self.limits)
            except RequestError as error:
                raise gr.Error(error.message) from None
            sides.append(CompareSide(model, options, self.pieces(model), timed(stream)))
        try:
            run = self.server.pool.submit(lambda: interleave([side.stream for side in sides]))
        except QueueFull:
            raise gr.Error(QUEUE_FULL_MESSAGE) from None
        control.start(run)
        pacer = Pacer()
        for which, (step, seconds) in steps_of(run, self.limits, control):
            if control.stop_requested:
                break
            if sides[which].advance(step, seconds):
                pacer.wait()
                yield [html for side in sides for html in side.views(seed)]
        end = "stopped" if control.stop_requested else "done"
        yield [html for side in sides for html in side.views(seed, end)]


class CompareSide:
    """One side of a comparison: its model, options and latest frame."""

    def __init__(self, model: Model, options: SamplerOptions, pieces: TokenPieces, stream: Iterator[Any]):
        self.model, self.options, self.pieces, self.stream = model, options, pieces, stream
        self.make_frame, self.frame, self.last_step = FrameMaker(), None, None
        self.total_steps: int | None = None

    def advance(self, step: SamplerStep, seconds: float) -> bool:
        """Take a step; whether it changed the canvas."""
        self.frame, self.last_step = self.make_frame(step, seconds), step
        if self.total_steps is None:  # the plan is fixed by the first frame's layout
            self.total_steps = planned_steps(self.model, self.options, self.frame.generated)
        return any(self.frame.new)

    def views(self, seed: int, state: str = "denoising") -> list[str]:
        """The side's status line and canvas, ``state`` denoising, done or stopped."""
        mask_id = self.model.pipe.tokenizer.mask_id
        if self.frame is None:
            return [status_html(None, "waiting"), canvas_html(None, self.pieces, mask_id, "waiting...")]
        note = ""
        if state == "done":
            result = run_result(self.model, self.options, [self.last_step], self.frame.seconds)
            note = f"entropy {result.entropy:.2f} nats"
        return [status_html(self.frame, state, self.total_steps, seed, note),
                canvas_html(self.frame, self.pieces, mask_id)]


def build_page(server: Server) -> gr.Blocks:
    """The Gradio page for ``server``'s models."""
    return Page(server).build()
