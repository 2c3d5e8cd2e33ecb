"""The web page (Gradio, mounted at /): watch the masks resolve, scrub back, compare two settings, see the noise.

Every generation goes through the server's :class:`~ddlm.app.limits.GenerationPool`, as
the API's do; the page only turns steps into HTML (:mod:`ddlm.app.render`).
"""

from __future__ import annotations

import html
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from ddlm.app.api import QUEUE_FULL_MESSAGE, STOPPED_MESSAGE, Server, time_limit_message
from ddlm.app.limits import Limits, QueueFull, Run, RunStopped, TimeLimitExceeded
from ddlm.app.render import CSS, LEGEND, Frame, FrameMaker, canvas_html, status_html
from ddlm.app.service import GenerationRequest, Model, RequestError, as_request_error, open_stream, run_result, timed
from ddlm.errors import DDLMError
from ddlm.samplers import SamplerOptions
from ddlm.samplers.options import SEDD_METHODS
from ddlm.samplers.policies import POLICIES, REMASK_SCHEDULES
from ddlm.viz.animation import denoising_frames, legend_for, save_animation
from ddlm.viz.tokens import TokenPieces

__all__ = ["CSS", "build_page"]

FRAME_SECONDS = 0.04  # at most 25 redraws a second, so a fast model's run can still be watched
DEFAULT_TEMPLATE = "To be, or [MASK*12], that is"

INTRO = """
# ddlm: watch a diffusion language model write
A diffusion language model does not write left to right. It starts from a canvas of **masked
positions** (grey boxes) and, step by step, fills some of them in, in any order, each time
looking at everything written so far. Type a prompt, press **Generate** and watch the masks
resolve; then scrub back through the steps, or compare two settings on the same seed.
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

OPTION_HELP = {
    "steps": "denoising steps (the autoregressive model takes one per token)",
    "temperature": "0: always the most likely token",
    "top_k": "0: off",
    "top_p": "1: off",
    "use_cache": "skip model calls that would repeat the last one",
    "policy": "which masked positions each step writes",
    "block_length": "0: off; else write blocks of this many positions left to right",
    "threshold": "0: off; also write every position the model is this sure of",
    "remask": "ReMDM: let the model mask written tokens again (ancestral policy)",
    "remask_eta": "how strongly to remask",
    "entropy_bound": "0: off; also write the surest positions while their entropies (less the largest) stay under it",
    "prefix_cache": "reuse keys/values left of the current block",
    "dual_cache": "reuse keys/values left and right of the current block",
    "min_length": "no end of text among the first N tokens",
    "method": "SEDD step",
}


def option_inputs(limits_steps: int) -> dict[str, gr.components.Component]:
    """One input per sampler option, with its default; values of 0 (or 1 for top-p) mean 'off'."""
    defaults = SamplerOptions()

    def label(name: str) -> dict[str, Any]:
        return {"label": name.replace("_", " "), "info": OPTION_HELP[name], "elem_id": f"option-{name}"}

    return {
        "steps": gr.Slider(1, limits_steps, value=min(defaults.steps, limits_steps), step=1, **label("steps")),
        "temperature": gr.Slider(0, 2, value=defaults.temperature, step=0.05, **label("temperature")),
        "top_k": gr.Number(0, precision=0, minimum=0, **label("top_k")),
        "top_p": gr.Slider(0.05, 1, value=1, step=0.05, **label("top_p")),
        "use_cache": gr.Checkbox(defaults.use_cache, **label("use_cache")),
        "policy": gr.Dropdown(list(POLICIES), value=defaults.policy, **label("policy")),
        "block_length": gr.Number(0, precision=0, minimum=0, **label("block_length")),
        "threshold": gr.Slider(0, 1, value=0, step=0.05, **label("threshold")),
        "entropy_bound": gr.Slider(0, 20, value=0, step=0.5, **label("entropy_bound")),
        "remask": gr.Dropdown(["off", *REMASK_SCHEDULES], value="off", **label("remask")),
        "remask_eta": gr.Slider(0, 1, value=defaults.remask_eta, step=0.01, **label("remask_eta")),
        "prefix_cache": gr.Checkbox(defaults.prefix_cache, **label("prefix_cache")),
        "dual_cache": gr.Checkbox(defaults.dual_cache, **label("dual_cache")),
        "min_length": gr.Number(defaults.min_length, precision=0, minimum=0, **label("min_length")),
        "method": gr.Dropdown(list(SEDD_METHODS), value=defaults.method, **label("method")),
    }


def options_from_inputs(process: str, values: dict[str, Any]) -> dict[str, Any]:
    """The sampler options the page's inputs set, 'off' values dropped, those of other processes left out."""
    off = {"top_k": 0, "top_p": 1, "block_length": 0, "threshold": 0, "entropy_bound": 0, "remask": "off"}
    applicable = SamplerOptions().applicable(process)
    options = {}
    for name, value in values.items():
        if name not in applicable or value is None or off.get(name, object()) == value:
            continue
        options[name] = int(value) if name in ("steps", "top_k", "block_length", "min_length") else value
    return options


def applies(name: str, process: str) -> bool:
    return name in SamplerOptions().applicable(process)


def submit(server: Server, model: Model, request: GenerationRequest) -> tuple[SamplerOptions, Run]:
    """Check and queue a run; a refusal becomes the page's error toast."""
    try:
        options, steps = open_stream(model, request, server.limits)
        return options, server.pool.submit(lambda: timed(steps))
    except RequestError as error:
        raise gr.Error(error.message) from None
    except QueueFull:
        raise gr.Error(QUEUE_FULL_MESSAGE) from None


def steps_of(run: Run, limits: Limits) -> Iterator[Any]:
    """The run's items; its errors become the page's error toast."""
    try:
        yield from run
    except DDLMError as error:
        raise gr.Error(as_request_error(error).message) from None
    except TimeLimitExceeded:
        raise gr.Error(time_limit_message(limits)) from None
    except RunStopped:
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
    """The model card: process, schedule, size, tokenizer, training summary, held-out NELBO."""
    card = model.card()
    process = card["process"]
    schedule = process.get("schedule")
    summary = card["training_summary"]
    nelbo = card["held_out_nelbo"]
    rows = [
        ("process", process["name"]),
        ("noise schedule", ", ".join(f"{k}={v}" for k, v in schedule.items()) if isinstance(schedule, dict) else schedule),
        ("parameters", f"{card['parameters']:,}"),
        ("layers / width / heads", f"{card['layers']} / {card['d_model']} / {card['heads']}"),
        ("context", f"{card['context_length']} tokens"),
        ("tokenizer", f"{card['tokenizer']['kind']}, vocabulary {card['tokenizer']['vocab_size']}"),
        ("held-out NELBO", f"{nelbo:.4f} nats/token ({nelbo / math.log(2):.4f} bits)" if nelbo else "not recorded"),
        ("training", ", ".join(f"{key} {summary[key]}" for key in ("steps", "tokens", "train_seconds", "precision")
                               if key in summary) or "no training summary"),
        ("trained on", summary.get("machine", "unknown")),
        ("loaded from", card["source"]),
    ]
    table = "\n".join(f"| {name} | {html.escape(str(value))} |" for name, value in rows)
    return f"### {card['name']}\n\n| property | value |\n|---|---|\n{table}\n"


def build_page(server: Server) -> gr.Blocks:
    """The Gradio page for ``server``'s models."""
    models, limits = server.models, server.limits
    first = models.get(None)
    step_cap = min(limits.max_steps, 512)

    def pieces_of(model: Model) -> TokenPieces:
        return piece_tables.setdefault(model.name, TokenPieces(model.pipe.tokenizer))

    piece_tables: dict[str, TokenPieces] = {}
    gif_folder = tempfile.TemporaryDirectory(prefix="ddlm-gifs-")  # removed when the server exits

    def length_cap(model: Model) -> int:
        return min(model.pipe.context_length, limits.max_length)

    with gr.Blocks(title="ddlm: watch a diffusion language model write", delete_cache=(3600, 3600)) as page:
        gr.Markdown(INTRO)
        model_name = gr.Dropdown(models.names, value=first.name, label="Model", visible=len(models.names) > 1,
                                 elem_id="model")

        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=2, min_width=320):
                    mode = gr.Radio(["prompt", "infill template"], value="prompt", label="Write from",
                                    elem_id="mode")
                    prompt = gr.Textbox("ROMEO:", label="Prompt (kept fixed; the model writes after it)", lines=2,
                                        elem_id="prompt")
                    suffix = gr.Textbox("", label="Fixed ending (optional; the model writes towards it)",
                                        elem_id="suffix")
                    template = gr.Textbox(DEFAULT_TEMPLATE, label="Template", lines=2, visible=False,
                                          info="[MASK] is one token to fill, [MASK*n] is n of them", elem_id="template")
                    length = gr.Slider(1, length_cap(first), value=min(128, length_cap(first) // 2), step=1,
                                       label="length (tokens to write)", elem_id="length")
                    with gr.Row():
                        samples = gr.Slider(1, min(limits.max_samples, 4), value=1, step=1, label="samples",
                                            elem_id="samples")
                        seed = gr.Number(0, precision=0, label="seed (same seed, same text)", elem_id="seed")
                    with gr.Row():
                        generate = gr.Button("Generate", variant="primary", elem_id="generate")
                        stop = gr.Button("Stop", elem_id="stop")
                    with gr.Accordion("Sampler options (defaults of the model's process)", open=False):
                        inputs = option_inputs(step_cap)
                with gr.Column(scale=3, min_width=420):
                    status = gr.HTML(status_html(None, note="Press Generate to start."), elem_id="status")
                    canvas = gr.HTML(canvas_html(None, pieces_of(first), first.pipe.tokenizer.mask_id),
                                     elem_id="canvas")
                    gr.HTML(LEGEND)
                    scrub = gr.Slider(1, 2, value=1, step=1, label="scrub through the steps of the last run",
                                      visible=False, elem_id="scrub")
                    with gr.Row():
                        make_gif = gr.Button("Make a GIF of this run (sample 1)", visible=False, elem_id="make-gif")
                        gif = gr.File(label="GIF", visible=False, elem_id="gif")
            frames = gr.State([])
            steps_kept = gr.State([])

        with gr.Tab("Compare"):
            gr.Markdown("Two settings (or two models) on the same prompt and seed, run together.")
            with gr.Row():
                compare_prompt = gr.Textbox("ROMEO:", label="Prompt", scale=3, elem_id="compare-prompt")
                compare_length = gr.Slider(1, length_cap(first), value=min(64, length_cap(first) // 2), step=1,
                                           label="length", scale=2)
                compare_seed = gr.Number(0, precision=0, label="seed", scale=1)
            run_both = gr.Button("Run both", variant="primary", elem_id="compare")
            sides = []
            with gr.Row():
                for side, policy, steps in (("A", "ancestral", 64), ("B", "confidence", 16)):
                    with gr.Column():
                        gr.Markdown(f"#### Setting {side}")
                        with gr.Row():
                            side_model = gr.Dropdown(models.names, value=first.name, label="model",
                                                     visible=len(models.names) > 1)
                            side_policy = gr.Dropdown(list(POLICIES), value=policy, label="policy")
                            side_steps = gr.Slider(1, step_cap, value=min(steps, step_cap), step=1, label="steps")
                            side_temperature = gr.Slider(0, 2, value=1.0, step=0.05, label="temperature")
                        side_status = gr.HTML(status_html(None, note=""))
                        side_canvas = gr.HTML(canvas_html(None, pieces_of(first), first.pipe.tokenizer.mask_id,
                                                          empty="Press Run both."))
                        sides.append((side_model, side_policy, side_steps, side_temperature, side_status, side_canvas))
            gr.HTML(LEGEND)

        with gr.Tab("Forward process"):
            gr.Markdown("Training corrupts text with the model's own forward process; generation runs it backwards. "
                        "Move the slider from clean (0) to pure noise (1).")
            forward_text = gr.Textbox("To be, or not to be, that is the question", label="Text", elem_id="forward-text")
            with gr.Row():
                noise_level = gr.Slider(0, 1, value=0.5, step=0.01, label="noise level t", elem_id="noise")
                forward_seed = gr.Number(0, precision=0, label="seed")
            forward_status = gr.HTML()
            forward_canvas = gr.HTML(elem_id="forward-canvas")

        with gr.Tab("Model card"):
            card = gr.Markdown(card_markdown(first), elem_id="card")

        with gr.Tab("API"):
            gr.Markdown(API_HELP)

        # ----- generate -----

        def run_generate(name, write_mode, prompt_text, suffix_text, template_text, length_value, sample_count,
                         seed_value, *option_values):
            model = models.get(name)
            infill = write_mode == "infill template"
            request = GenerationRequest(
                model=model.name, prompt=None if infill else prompt_text, suffix=None if infill else suffix_text,
                infill=template_text if infill else None, num_samples=int(sample_count),
                length=None if infill else int(length_value),
                options=options_from_inputs(model.process, {**dict(zip(inputs, option_values)),
                                                             "seed": None if seed_value is None else int(seed_value)}),
            )
            options, run = submit(server, model, request)
            make_frame, pacer, kept, every_step, frame = FrameMaker(), Pacer(), [], [], None
            pieces, mask_id = pieces_of(model), model.pipe.tokenizer.mask_id
            hidden = (gr.Slider(visible=False), gr.Button(visible=False), gr.File(visible=False))
            yield (canvas_html(None, pieces, mask_id, empty="Waiting for a free worker..."),
                   status_html(None, note="queued"), *hidden, [], [])
            for step, seconds in steps_of(run, limits):
                frame = make_frame(step, seconds)
                every_step.append(step)
                if any(frame.new):  # steps that change nothing are not drawn
                    kept.append(frame)
                    pacer.wait()
                    yield (canvas_html(frame, pieces, mask_id), status_html(frame, options.steps),
                           *[gr.skip()] * 5)
            if frame is not None:
                yield (canvas_html(kept[-1] if kept else frame, pieces, mask_id),
                       status_html(frame, options.steps, state="done"),
                       gr.Slider(1, len(kept), value=len(kept), step=1, visible=len(kept) > 1),
                       gr.Button(visible=True), gr.skip(), kept, every_step)

        generation = generate.click(run_generate, [model_name, mode, prompt, suffix, template, length, samples, seed,
                                                   *inputs.values()],
                                    [canvas, status, scrub, make_gif, gif, frames, steps_kept], concurrency_limit=None,
                                    show_progress="hidden")
        stop.click(None, cancels=[generation])

        def write_gif(steps, name):
            if not steps:
                raise gr.Error("generate something first")
            tokenizer = models.get(name).pipe.tokenizer
            with tempfile.NamedTemporaryFile(dir=gif_folder.name, prefix="ddlm-denoising-", suffix=".gif") as named:
                path = Path(named.name)  # a fresh name; the file itself is written atomically below
            save_animation(denoising_frames(steps, tokenizer, "confidence"), path, legend_for("confidence"))
            return gr.File(value=str(path), visible=True)

        make_gif.click(write_gif, [steps_kept, model_name], gif, concurrency_limit=1)

        def show_step(index, kept, name):
            if not kept:
                return gr.skip(), gr.skip()
            model = models.get(name)
            frame = kept[int(index) - 1]
            return (canvas_html(frame, pieces_of(model), model.pipe.tokenizer.mask_id),
                    status_html(frame, state="replay", note=f"frame {int(index)} of {len(kept)}"))

        scrub.input(show_step, [scrub, frames, model_name], [canvas, status], show_progress="hidden")

        def switch_mode(write_mode):
            infill = write_mode == "infill template"
            return (gr.Textbox(visible=not infill), gr.Textbox(visible=not infill), gr.Slider(visible=not infill),
                    gr.Textbox(visible=infill))

        mode.change(switch_mode, mode, [prompt, suffix, length, template])

        # ----- compare -----

        def run_compare(prompt_text, length_value, seed_value, *side_values):
            settings = [side_values[:4], side_values[4:]]
            runs = []
            for name, policy, steps_value, temperature in settings:
                model = models.get(name)
                request = GenerationRequest(
                    model=model.name, prompt=prompt_text, length=int(length_value),
                    options=options_from_inputs(model.process, {"policy": policy, "steps": int(steps_value),
                                                                "temperature": temperature, "seed": int(seed_value or 0)}),
                )
                try:
                    options, steps = open_stream(model, request, limits)
                except RequestError as error:
                    raise gr.Error(error.message) from None
                runs.append((model, options, timed(steps)))
            try:
                run = server.pool.submit(lambda: interleave([steps for _, _, steps in runs]))
            except QueueFull:
                raise gr.Error(QUEUE_FULL_MESSAGE) from None
            makers, latest, lasts, pacer = [FrameMaker(), FrameMaker()], [None, None], [None, None], Pacer()
            views = [(pieces_of(model), model.pipe.tokenizer.mask_id) for model, _, _ in runs]

            def outputs(done: list[str] | None = None) -> list[str]:
                shown = []
                for side, frame in enumerate(latest):
                    note = done[side] if done else ""
                    shown += [status_html(frame, runs[side][1].steps, state="done" if done else "denoising", note=note),
                              canvas_html(frame, *views[side], empty="waiting...")]
                return shown

            for side, (step, seconds) in steps_of(run, limits):
                latest[side], lasts[side] = makers[side](step, seconds), step
                if any(latest[side].new):
                    pacer.wait()
                    yield outputs()
            summaries = []
            for side, (model, options, _) in enumerate(runs):
                result = run_result(model, options, [lasts[side]], latest[side].seconds)
                summaries.append(f"entropy {result.entropy:.2f} nats")
            yield outputs(summaries)

        run_both.click(run_compare, [compare_prompt, compare_length, compare_seed,
                                     *[component for side in sides for component in side[:4]]],
                       [component for side in sides for component in side[4:]], concurrency_limit=None,
                       show_progress="hidden")

        # ----- forward process, model card, model choice -----

        def show_forward(name, text, t, seed_value):
            model = models.get(name)
            frame, note = forward_frame(model, text, t, seed_value)
            body = canvas_html(frame, pieces_of(model), model.pipe.tokenizer.mask_id, empty="")
            return status_html(None, note=note), body

        forward_inputs = [model_name, forward_text, noise_level, forward_seed]
        for trigger in (forward_text.change, noise_level.change, forward_seed.change, page.load):
            trigger(show_forward, forward_inputs, [forward_status, forward_canvas], show_progress="hidden")

        def switch_model(name):
            model = models.get(name)
            cap = length_cap(model)
            updates = [gr.update(visible=applies(option, model.process)) for option in inputs]
            return [card_markdown(model), gr.Slider(1, cap, value=min(128, cap // 2)), *updates]

        model_name.change(switch_model, model_name, [card, length, *inputs.values()])
        page.load(switch_model, model_name, [card, length, *inputs.values()])
    return page


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
