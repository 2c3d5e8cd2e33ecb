"""The ``ddlm`` command: a thin layer over the trainer and the pipeline.

Only the chosen command's flags are built (their choices come from modules that load torch),
so ``ddlm --help`` and ``ddlm --version`` answer without loading torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from ddlm import __version__
from ddlm.bundled import DEFAULT_JUDGE, DEFAULT_MODEL
from ddlm.errors import DDLMError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
EXIT_SIGTERM = 143  # 128 + SIGTERM
MODEL_HELP = "a model directory (the --out of `ddlm train`), a bundled model name (`ddlm models`) or a Hugging Face Hub id"


def parse_duration(text: str) -> float:
    """Seconds in '600', '90s', '10m', '1.5h'."""
    from ddlm.training.config import duration_seconds

    try:
        return duration_seconds(text)
    except DDLMError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def check_minimums(args: argparse.Namespace, minimums: dict[str, int]) -> None:
    """A one-line error for a numeric option below its minimum (None: not given)."""
    for name, minimum in minimums.items():
        value = getattr(args, name)
        if value is not None and not value >= minimum:
            raise DDLMError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """--threads of the commands that run a model; :func:`main` applies it (``ddlm.device.set_threads``)."""
    parser.add_argument("--threads", type=int, help="CPU threads (default: one per idle core, judged by the load average "
                        "and the threads running now, at most the CPUs this process may use; an OMP_NUM_THREADS you set "
                        "is kept)")


def add_runtime_flags(parser: argparse.ArgumentParser, compile_flag: bool = True) -> None:
    """--precision, --threads (and --compile) of the commands that run a model."""
    from ddlm.device import PRECISIONS

    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: bf16 where the CPU or GPU multiplies bf16 natively, else fp32 (default: auto)")
    add_threads_flag(parser)
    if compile_flag:
        parser.add_argument("--compile", action="store_true", help="sample through torch.compile: about a minute "
                            "to compile, then ~1.5x faster (pays off for runs of a few minutes or more)")


def add_sampler_flags(parser: argparse.ArgumentParser, defaults: dict[str, object] | None = None,
                      notes: dict[str, str] | None = None) -> None:
    """One flag per sampler option (every registered family's), generated from the options' declarations.

    A flag left unset is None, so the option keeps the model's default, unless the command gives
    its own in ``defaults`` (``ddlm animate``: 64 steps); ``notes`` add a command's remark to a help text.
    """
    from ddlm.families import offered_options, option_help

    defaults, notes = defaults or {}, notes or {}
    parser.set_defaults(sampler_flags=True)
    group = parser.add_argument_group("sampling", "an option left unset takes the model's own default (its "
                                      "sampler_config.json, where it has one), else the default shown")
    for declared in offered_options():
        default = defaults.get(declared.name)
        shown = declared if default is None else dataclasses.replace(declared, default=default)
        text = option_help(shown) + (f"; {notes[declared.name]}" if declared.name in notes else "")
        if declared.kind is bool:
            turns_off = bool(declared.default)
            group.add_argument(declared.flag, dest=declared.name, action="store_false" if turns_off else "store_true",
                               default=None, help=text + ("; this flag turns it off" if turns_off else ""))
        else:
            group.add_argument(declared.flag, dest=declared.name, type=declared.kind, default=default,
                               choices=declared.option.choices, help=text)


def sampler_changes(args: argparse.Namespace) -> dict[str, object]:
    """The sampler options set by flags (or by the command's own defaults), by name: they replace the model's
    sampler defaults (``DiffusionPipeline.sampler_options``), which are checked with them."""
    from ddlm.families import offered_options

    return {declared.name: getattr(args, declared.name) for declared in offered_options()
            if getattr(args, declared.name, None) is not None}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``ddlm`` parser, with the flags of ``command`` only (None: of no command, enough for --help and --version)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    common.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")

    parser = argparse.ArgumentParser(
        prog="ddlm", description="Train, sample and evaluate discrete diffusion language models.",
        epilog="Start with `ddlm sample` (the bundled Shakespeare model); `ddlm COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"ddlm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_flags, _) in COMMANDS.items():
        subparser = subparsers.add_parser(name, parents=[common], help=help_text)
        if name == command:
            add_flags(subparser)
            subparser.set_defaults(command_parser=subparser)  # its usage for an unknown flag
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first word that is not an option (``ddlm`` itself takes no option values)."""
    return next((word for word in argv if not word.startswith("-")), None)


def add_train_flags(train: argparse.ArgumentParser) -> None:
    train.add_argument("--data", help="training text: a .txt file, a folder of .txt files, a .jsonl file, a folder "
                       "saved with datasets' save_to_disk, hf:NAME (a Hugging Face data set, streamed; see data.hf_*), "
                       "or a built-in corpus (shakespeare, the default); a local path of that name wins")
    train.add_argument("--valid", help="validation text, as --data (default: hold out data.valid_fraction of --data)")
    train.add_argument("--out", required=True, help="run directory; it becomes the model directory")
    train.add_argument("--preset", help="a named configuration (see `ddlm presets`)")
    train.add_argument("--config", help="a YAML configuration file")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings such as optim.lr=3e-4")
    train.add_argument("--resume", action="store_true", help="continue the run saved in --out exactly")
    train.add_argument("--accept-data-change", action="store_true",
                       help="with --resume: continue on text that differs from the run's corpus, from its first batch")
    train.add_argument("--init", metavar="MODEL", help="start from this model's weights and tokenizer (a model directory, a "
                       "bundled name, or a Hugging Face causal LM: GPT-2, Llama, Qwen), e.g. an autoregressive model "
                       "adapted to masked or block diffusion")
    train.add_argument("--max-steps", type=int, help="total optimizer steps (sets optim.max_steps)")
    train.add_argument("--time-budget", type=parse_duration, help="training time, e.g. 10m (sets optim.time_budget)")
    train.add_argument("--stop-after", type=int, metavar="STEP", help="stop at this step; continue later with --resume")
    train.add_argument("--cache-dir", help="where tokenised corpora are cached (default: ~/.cache/ddlm)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_threads_flag(train)


def add_finetune_flags(finetune: argparse.ArgumentParser) -> None:
    finetune.add_argument("--model", help=f"the model to start from: {MODEL_HELP}")
    finetune.add_argument("--data", help='a .jsonl file of {"prompt", "response"} or {"messages": [{"role", "content"}, '
                          '...]} rows (the last turn is the response)')
    finetune.add_argument("--valid", help="held-out rows, as --data (default: hold out data.valid_fraction of --data)")
    finetune.add_argument("--out", required=True, help="run directory; it becomes the fine-tuned model's directory")
    finetune.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings such as optim.lr=3e-4")
    finetune.add_argument("--resume", action="store_true", help="continue the fine-tuning saved in --out exactly")
    finetune.add_argument("--max-steps", type=int, help="total optimizer steps (sets optim.max_steps; default 500)")
    finetune.add_argument("--time-budget", type=parse_duration, help="training time, e.g. 10m (sets optim.time_budget)")
    finetune.add_argument("--stop-after", type=int, metavar="STEP", help="stop at this step; continue later with --resume")
    lora = finetune.add_argument_group("LoRA (default: full fine-tuning)")
    lora.add_argument("--lora-rank", type=int, help="train rank-R adapters instead of every weight")
    lora.add_argument("--lora-alpha", type=float, help="adapter scale alpha / R (default alpha: 2 R)")
    lora.add_argument("--lora-dropout", type=float, help="dropout on the adapters' input (default: 0)")
    lora.add_argument("--lora-targets", type=lambda text: [name for name in text.split(",") if name],
                      help="linear layers to adapt, by name (default: ddlm's qkv,out,gate_up,down; Hugging Face "
                           "models' attention and MLP projections)")
    lora.add_argument("--lora-save", choices=("merged", "adapter"),
                      help="merged: adapters folded into the exported weights (default); adapter: the adapters alone, "
                           "with their base model named")
    finetune.add_argument("--gradient-checkpointing", action="store_true", default=None,
                          help="recompute activations in the backward pass: less memory, ~30%% more time")
    finetune.add_argument("--chat-template", type=lambda text: text.replace("\\n", "\n"),
                          help="how ddlm tokenizers write messages turns, \\n for a newline (default: "
                          "'{role}:\\n{content}\\n\\n'); Hugging Face models use their own chat template")
    finetune.add_argument("--chat-roles", type=lambda text: text.split(","), metavar="USER,ASSISTANT",
                          help="the roles `ddlm sample --chat` gives a prompt and its reply (default: user,assistant)")
    finetune.add_argument("--trust-remote-code", action="store_true",
                          help="run model code shipped with a Hugging Face model (LLaDA, Dream); only if you trust it")
    finetune.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_threads_flag(finetune)


def add_sample_flags(sample: argparse.ArgumentParser) -> None:
    from ddlm.pipeline import DEFAULT_BATCH_SIZE

    add_sampler_flags(sample)
    sample.add_argument("--model", help=f"{MODEL_HELP} (default: the bundled {DEFAULT_MODEL!r})")
    sample.add_argument("--prompt", action="append",
                        help="text the samples start with (kept fixed); repeat for several prompts in one batch")
    sample.add_argument("--infill", metavar="TEMPLATE",
                        help=r"fill the gaps of a template, e.g. 'To be, or [MASK*12], that is' (\[ for a bracket)")
    sample.add_argument("--suffix", help="text fixed after the generated positions (diffusion models)")
    sample.add_argument("-n", "--num-samples", type=int, default=1, help="samples per prompt (default: 1)")
    sample.add_argument("--length", type=int, help="tokens to generate (default: fill the context)")
    sample.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"samples drawn at once; each batch is printed when done (default: {DEFAULT_BATCH_SIZE})")
    sample.add_argument("--live", action="store_true",
                        help="watch the denoising in the terminal (plain text when stdout is not a terminal)")
    sample.add_argument("--no-progress", action="store_true", help="hide the progress bar on stderr")
    add_runtime_flags(sample)
    sample.add_argument("--keep-eos", action="store_true", help="print text after a generated end-of-text token")
    sample.add_argument("--format", choices=["text", "jsonl"], default="text",
                        help="plain text with separator lines, or one JSON object per sample (default: text)")
    sample.add_argument("--chat", action="store_true",
                        help="wrap each prompt in the model's chat format: its tokenizer's chat template (Hugging "
                             "Face chat models), or the turns a model was fine-tuned on (`ddlm finetune`)")
    sample.add_argument("--trust-remote-code", action="store_true",
                        help="run model code shipped with a Hugging Face model (LLaDA, Dream); only if you trust it")


def add_animate_flags(animate: argparse.ArgumentParser) -> None:
    from ddlm.viz.animation import COLOR_BY

    add_sampler_flags(animate, defaults={"steps": 64}, notes={"steps": "one frame each (--forward: noise levels)"})
    animate.add_argument("--model", default=DEFAULT_MODEL, help=f"{MODEL_HELP} (default: the bundled {DEFAULT_MODEL!r})")
    animate.add_argument("--out", required=True, help="the animation to write: a .gif or .webp file")
    animate.add_argument("--prompt", help="text the sample starts with (kept fixed)")
    animate.add_argument("--infill", metavar="TEMPLATE", help=r"fill the gaps of a template, e.g. 'To be, [MASK*12]'")
    animate.add_argument("--suffix", help="text fixed after the generated positions")
    animate.add_argument("--length", type=int, help="tokens to generate (default: fill the context)")
    animate.add_argument("--color", choices=COLOR_BY, default="confidence",
                         help="colour tokens by the model's confidence or by when they were revealed")
    animate.add_argument("--forward", metavar="TEXT", help="animate the forward process on TEXT instead of sampling")
    animate.add_argument("--frame-ms", type=int, default=120, help="time per frame (default: 120)")
    animate.add_argument("--hold-ms", type=int, default=2000, help="extra time on the last frame (default: 2000)")
    add_runtime_flags(animate, compile_flag=False)


def add_plot_flags(plot: argparse.ArgumentParser) -> None:
    plot.add_argument("runs", nargs="+", metavar="RUN", help="run directories (the --out of `ddlm train`)")
    plot.add_argument("--out", required=True, help="the figure to write: .png, .svg or .pdf")


def add_eval_flags(evaluate: argparse.ArgumentParser) -> None:
    add_sampler_flags(evaluate, defaults={"seed": 0}, notes={"seed": "ddlm eval draws no fresh one: seed 0 unless given, so "
                                                                     "that two evaluations compare"})
    evaluate.add_argument("--model", action="append", required=True, help=f"{MODEL_HELP}; repeat to compare")
    evaluate.add_argument("--data", help="held-out text for the likelihood: a file, folder, .jsonl, saved data set or "
                          "hf:NAME (its data.hf_valid_split), shakespeare: the built-in corpus's last 10%%, "
                          "the text training holds out, or a zero-shot corpus of the papers (ptb, wikitext2, "
                          "wikitext103, lm1b, lambada, ag_news, pubmed, arxiv: its split from the Hub, detokenised); "
                          "a local path of that name wins")
    evaluate.add_argument("--detokenizer", choices=["ptb", "wikitext", "lm1b", "lambada", "scientific_papers", "none"],
                          help="undo a corpus's tokenisation before the model reads it (default: a zero-shot "
                               "corpus's own, none otherwise), e.g. for a local copy of one")
    evaluate.add_argument("--metrics", nargs="+", default=["likelihood", "samples"],
                          choices=["likelihood", "left-to-right", "samples"],
                          help="likelihood: NELBO on --data; left-to-right: the exact NLL on --data of writing it one "
                               "token per step from the left (in each block), as --policy left-to-right does; samples: "
                               "judge NLL, diversity and speed (default: likelihood and samples)")
    evaluate.add_argument("--judge", help="judge for generative perplexity: a ddlm AR model or a local Hugging Face LM "
                                          f"(default: the bundled {DEFAULT_JUDGE!r} for models of its vocabulary)")
    evaluate.add_argument("--json", metavar="OUT", help="write every figure and setting to this JSON file")
    evaluate.add_argument("--draws", type=int, default=16, help="NELBO time draws per sequence (default: 16)")
    evaluate.add_argument("--max-sequences", type=int, default=64, help="held-out rows scored, 0 for all (default: 64)")
    evaluate.add_argument("-n", "--num-samples", type=int, default=16, help="samples for the sample metrics")
    add_runtime_flags(evaluate)
    evaluate.add_argument("--no-progress", action="store_true", help="hide the progress bars on stderr")
    evaluate.add_argument("--trust-remote-code", action="store_true",
                          help="run model code shipped with a Hugging Face model (LLaDA, Dream); only if you trust it")


def add_no_flags(parser: argparse.ArgumentParser) -> None:
    """The commands that take only the common flags (``presets``, ``models``)."""


def add_serve_flags(serve: argparse.ArgumentParser) -> None:
    """``ddlm serve``: its limits default to those of ddlm.app.limits.Limits (read without importing the app)."""
    from ddlm.app.limits import Limits

    limits = Limits()
    serve.add_argument("--model", action="append",
                       help=f"{MODEL_HELP}; repeat for a model picker (default: every installed bundled model)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="(default: 8000)")
    add_runtime_flags(serve)
    serve.add_argument("--trust-remote-code", action="store_true",
                       help="run model code shipped with a Hugging Face model (LLaDA, Dream); only if you trust it")
    serve.add_argument("--workers", type=int, default=limits.workers,
                       help=f"generations running at once (default: {limits.workers})")
    serve.add_argument("--queue", type=int, default=limits.queue_size,
                       help=f"generations waiting for a worker; more are refused with 429 (default: {limits.queue_size})")
    serve.add_argument("--max-samples", type=int, default=limits.max_samples,
                       help=f"samples per request (default: {limits.max_samples})")
    serve.add_argument("--max-length", type=int, default=limits.max_length,
                       help=f"tokens generated per sample (default: {limits.max_length})")
    serve.add_argument("--max-steps", type=int, default=limits.max_steps,
                       help=f"sampler steps per request (default: {limits.max_steps})")
    serve.add_argument("--max-seconds", type=parse_duration, default=limits.max_seconds,
                       help=f"running time of one generation, e.g. 90s or 2m (default: {limits.max_seconds:g} s)")



def run_train(args: argparse.Namespace) -> int:
    from ddlm.data import DEFAULT_CORPUS
    from ddlm.device import has_fast_bf16
    from ddlm.training import load_config, prepare_training, saved_config

    check_minimums(args, {"max_steps": 1, "stop_after": 1})
    if args.time_budget is not None and args.time_budget <= 0:
        raise DDLMError(f"--time-budget must be more than 0 seconds, got {args.time_budget:g}")
    if args.resume:
        if args.preset or args.config:
            raise DDLMError("--resume continues with the run's saved configuration; drop --preset/--config")
        config = saved_config(args.out).with_overrides(args.overrides)
    else:
        config = load_config(args.preset, args.config, args.overrides)
    if args.max_steps is not None:
        config.optim.max_steps = args.max_steps
    if args.time_budget is not None:
        config.optim.time_budget = args.time_budget
    trainer = prepare_training(
        config, args.out, data=args.data, valid=args.valid, resume=args.resume, device=args.device,
        cache_dir=args.cache_dir, show_progress=not args.no_progress, init=args.init,
        accept_data_change=args.accept_data_change,
    )
    main_process = trainer.dist.is_main
    if main_process:
        if args.data is None and not args.resume:
            print(f"data: the built-in corpus {DEFAULT_CORPUS!r} (Tiny Shakespeare); pass --data to train on your own text",
                  file=sys.stderr)
        print(f"model: {trainer.model.num_parameters():,} parameters, vocabulary {trainer.tokenizer.vocab_size}, "
              f"precision {trainer.precision} on {trainer.device.type}", file=sys.stderr)
        if trainer.precision == "bf16" and not has_fast_bf16(trainer.device.type):
            print(f"warning: this {trainer.device.type} has no native bf16 matrix instructions, so bf16 is emulated "
                  "and much slower than fp32; use optim.precision=auto or fp32", file=sys.stderr)
    return train_and_report(trainer, args, "train")


def train_and_report(trainer, args: argparse.Namespace, command: str) -> int:
    """Run a prepared trainer to its end (or to --stop-after, or a signal) and report the result on rank 0."""
    from ddlm.training.signals import TrainingInterrupted

    main_process = trainer.dist.is_main
    again = f"continue with `ddlm {command} --out {args.out} --resume`"
    try:
        summary = trainer.train(stop_after=args.stop_after)
    except TrainingInterrupted as stop:
        if main_process:
            print(f"stopped by {stop.signal_name} at step {stop.step}, checkpoint saved; {again}", file=sys.stderr)
        return EXIT_SIGTERM if stop.signal_name == "SIGTERM" else EXIT_INTERRUPTED
    except KeyboardInterrupt:
        if main_process:
            saved = "no checkpoint yet" if trainer.saved_step is None else f"its checkpoint is at step {trainer.saved_step}"
            print(f"stopped at once at step {trainer.state.step} ({saved}); {again}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not main_process:
        return 0
    if "final_valid_nelbo" in summary:
        nats = summary["final_valid_nelbo"]
        print(f"validation NELBO: {nats:.4f} nats/token, {nats / math.log(2):.4f} bits/token, "
              f"perplexity <= {math.exp(nats):.2f}")
    print(f"model saved to {args.out} ({summary['steps']} steps, {summary['train_seconds']:.0f} s)")
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from ddlm.training.finetune import FineTuneSettings, prepare_finetune

    check_minimums(args, {"max_steps": 1, "stop_after": 1, "lora_rank": 0})
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"optim.max_steps={args.max_steps}")
    if args.time_budget is not None:
        overrides += [f"optim.time_budget={args.time_budget}"] + ([] if args.max_steps else ["optim.max_steps=null"])
    given = {name: getattr(args, name) for name in ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets",
                                                     "lora_save", "gradient_checkpointing", "chat_template", "chat_roles")
             if getattr(args, name) is not None}
    settings = None if args.resume and not given else FineTuneSettings(**given)
    trainer = prepare_finetune(args.model, args.data, args.out, valid=args.valid, overrides=overrides, settings=settings,
                               resume=args.resume, device=args.device, show_progress=not args.no_progress,
                               trust_remote_code=args.trust_remote_code)
    if trainer.dist.is_main:
        held_out = len(trainer.valid_loader.rows) if trainer.valid_loader is not None else 0
        trained = (f"LoRA rank {trainer.settings.lora_rank}" if trainer.settings.lora_rank else "full fine-tuning")
        print(f"fine-tuning {trainer.config.init.source}: {trainer.model.num_parameters():,} parameters ({trained}), "
              f"{len(trainer.train_loader.rows)} examples, {held_out} held out, precision {trainer.precision} "
              f"on {trainer.device.type}", file=sys.stderr)
        if trainer.truncated_rows:
            print(f"warning: {trainer.truncated_rows} examples were longer than the context "
                  f"({trainer.config.data.context_length} tokens) and were cut", file=sys.stderr)
    return train_and_report(trainer, args, "finetune")


def run_sample(args: argparse.Namespace) -> int:
    from ddlm import DiffusionPipeline

    if args.model is None:
        args.model = DEFAULT_MODEL
        print(f"using the bundled model {DEFAULT_MODEL!r} (choose another with --model)", file=sys.stderr)
    pipe = DiffusionPipeline.from_pretrained(args.model, device=args.device, precision=args.precision,
                                             trust_remote_code=args.trust_remote_code, compile_model=args.compile)
    from ddlm.samplers import last_steps
    from ddlm.viz.terminal import LiveView, SamplingProgress

    prompts = args.prompt[0] if args.prompt and len(args.prompt) == 1 else args.prompt
    options = pipe.sampler_options(**sampler_changes(args)).with_seed()
    steps = pipe.stream(
        prompts, options, num_samples=args.num_samples, length=args.length, infill=args.infill, suffix=args.suffix,
        batch_size=args.batch_size, texts=False, chat=args.chat,
    )
    total = args.num_samples * (len(args.prompt) if args.prompt else 1)
    live = args.live and sys.stdout.isatty()
    view = LiveView(pipe.tokenizer, total) if live else SamplingProgress(total, enabled=not args.no_progress)
    with view:
        for last in last_steps(view.watch(steps)):
            for row in range(last.tokens.shape[0]):
                text = pipe.decode(last, row, stop_at_eos=not args.keep_eos)
                print_sample(args, last.first_sample + row, text, options.seed)
            sys.stdout.flush()
    if args.seed is None:
        print(f"seed {options.seed} (pass --seed {options.seed} to draw these samples again)", file=sys.stderr)
    return 0


def run_animate(args: argparse.Namespace) -> int:
    from ddlm import DiffusionPipeline
    from ddlm.viz.animation import (
        check_animation_path,
        denoising_frames,
        forward_frames,
        forward_legend,
        legend_for,
        save_animation,
    )

    check_animation_path(args.out)
    pipe = DiffusionPipeline.from_pretrained(args.model, device=args.device, precision=args.precision)
    if args.forward is not None:
        frames = forward_frames(pipe.process, pipe.tokenizer, args.forward, args.steps + 1, args.seed or 0)
        legend = forward_legend(frames)
    else:
        options = pipe.sampler_options(**sampler_changes(args)).with_seed()
        steps = list(pipe.stream(args.prompt, options, length=args.length, infill=args.infill, suffix=args.suffix,
                                 texts=False))
        frames, legend = denoising_frames(steps, pipe.tokenizer, args.color), legend_for(args.color)
        if args.seed is None:
            print(f"seed {options.seed} (pass --seed {options.seed} to animate this sample again)", file=sys.stderr)
    count = save_animation(frames, args.out, legend, args.frame_ms, args.hold_ms)
    print(f"wrote {args.out} ({count} frames)", file=sys.stderr)
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from ddlm.viz.plots import plot_runs

    for note in plot_runs(args.runs, args.out):
        print(f"warning: {note}", file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def print_sample(args: argparse.Namespace, index: int, text: str, seed: int) -> None:
    """One sample of ``ddlm sample``, as text with separator lines or as a JSON line."""
    if args.format == "jsonl":
        prompt = args.prompt[index // args.num_samples] if args.prompt else None
        print(json.dumps({"index": index, "prompt": prompt, "text": text, "seed": seed}, ensure_ascii=False))
    else:
        if index:
            print("\n" + "-" * 40)
        print(text)


def run_eval(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ddlm import DiffusionPipeline
    from ddlm.data.zero_shot import evaluation_source
    from ddlm.device import describe_machine
    from ddlm.eval import default_judge, load_judge
    from ddlm.eval.likelihood import check_left_to_right
    from ddlm.eval.report import EvalSettings, evaluate, markdown_table
    from ddlm.fileio import check_writable_file, write_json_atomic

    check_minimums(args, {"draws": 1, "max_sequences": 0, "num_samples": 1})
    if args.data is not None:  # a bad --data fails before any model loads
        evaluation_source(args.data, detokenizer=args.detokenizer)
    if args.json:
        check_writable_file(args.json, "the --json file")  # before the work, not after the table
    settings = EvalSettings(
        metrics=tuple(args.metrics), draws=args.draws, max_sequences=args.max_sequences,
        num_samples=args.num_samples, sampler=sampler_changes(args), seed=args.seed,
        detokenizer=args.detokenizer,
    )
    pipes = {model: DiffusionPipeline.from_pretrained(model, device=args.device, precision=args.precision,
                                                      trust_remote_code=args.trust_remote_code,
                                                      compile_model=args.compile)
             for model in args.model}
    if "left-to-right" in args.metrics:  # before any model's work, not after the first ones'
        for pipe in pipes.values():
            check_left_to_right(pipe.process.name)
    judge = None
    if "samples" in args.metrics:
        judge = load_judge(args.judge) if args.judge else default_judge(list(pipes.values()))
        if judge is not None and not args.judge:
            print(f"judging samples with the bundled {DEFAULT_JUDGE!r} (choose another with --judge)", file=sys.stderr)
        elif judge is None:
            print("no judge for these models' vocabulary: pass --judge for the judge NLL", file=sys.stderr)

    def progress(what: str, total: int, unit: str):
        return tqdm(total=total, desc=what, disable=args.no_progress, leave=False, unit=unit,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {total} {unit} [{elapsed}<{remaining}]").update

    results = {}
    for model, pipe in pipes.items():
        results[model] = evaluate(pipe, args.data, judge, settings, progress)
    print(markdown_table(results))
    if args.json:
        write_json_atomic(Path(args.json), {"models": results, "data": args.data, "judge": args.judge,
                                            "machine": describe_machine()})
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def preset_size(name: str) -> tuple[int, int] | None:
    """(parameters, vocabulary) of a preset's model, counted on the meta device: a character vocabulary as on
    the built-in corpus, a byte or BPE one at its own size; None where the size needs files (gpt2)."""
    from types import SimpleNamespace

    import torch

    from ddlm.data import DEFAULT_CORPUS, builtin_text
    from ddlm.tokenizers import ByteTokenizer, CharTokenizer
    from ddlm.training import load_config
    from ddlm.training.trainer import build_model, build_run_process

    config = load_config(name)
    kind, size = config.tokenizer.kind, config.tokenizer.vocab_size
    if kind == "char":
        tokenizer = CharTokenizer.from_texts([builtin_text(DEFAULT_CORPUS)])
    elif kind == "byte":
        tokenizer = ByteTokenizer()
    elif kind == "bpe" and size:  # its ids only: the specials last, as BPETokenizer.train places them
        tokenizer = SimpleNamespace(vocab_size=size, mask_id=size - 3, eos_id=size - 2, pad_id=size - 1)
    else:
        return None
    with torch.device("meta"):
        model = build_model(config, tokenizer, build_run_process(config, tokenizer))
    return model.num_parameters(), tokenizer.vocab_size


def run_presets(args: argparse.Namespace) -> int:
    from ddlm.training import preset_descriptions

    descriptions = preset_descriptions()
    width = max(map(len, descriptions))
    for name, description in descriptions.items():
        size = preset_size(name)
        counted = "" if size is None else f" [{size[0]:,} parameters, vocabulary {size[1]:,}]"
        print(f"{name:<{width}}  {description}{counted}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    from ddlm.bundled import bundled_models

    models = bundled_models()
    width = max(len(model.name) for model in models)
    for model in models:
        note = "" if model.installed else "  [not installed]"
        print(f"{model.name:<{width}}  {model.description}{note}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from ddlm.app import require_app_extra

    require_app_extra()
    from ddlm.app.limits import Limits
    from ddlm.app.server import serve
    from ddlm.app.service import Models

    limits = Limits(max_samples=args.max_samples, max_length=args.max_length, max_steps=args.max_steps,
                    max_seconds=args.max_seconds, workers=args.workers, queue_size=args.queue)
    models = Models.load(args.model or [], device=args.device, precision=args.precision,
                         trust_remote_code=args.trust_remote_code, compile_model=args.compile)
    serve(models, args.host, args.port, limits)
    return 0


def run_lm_eval(args: argparse.Namespace) -> int:
    from ddlm.eval.harness import run_harness_cli

    return run_harness_cli(args.harness_arguments)


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    # name: (its line in `ddlm --help`, what adds its flags, what runs it)
    "train": ("train a model on a text corpus", add_train_flags, run_train),
    "finetune": ("fine-tune a model on prompt/response or chat examples (.jsonl); LoRA with --lora-rank",
                 add_finetune_flags, run_finetune),
    "sample": ("generate text from a model: a model directory, a bundled model or a Hub id", add_sample_flags, run_sample),
    "animate": ("a GIF (or WebP) of one sample being denoised, or of the forward process", add_animate_flags, run_animate),
    "plot": ("training curves of runs (needs the plot extra)", add_plot_flags, run_plot),
    "eval": ("likelihood, sample quality, diversity and speed of models", add_eval_flags, run_eval),
    "presets": ("list the named training configurations", add_no_flags, run_presets),
    "models": ("list the bundled pretrained models", add_no_flags, run_models),
    "serve": ("web app and HTTP API: watch the denoising live", add_serve_flags, run_serve),
    "lm-eval": ("lm-evaluation-harness tasks (needs the eval extra): lm-eval's own flags, --model ddlm implied",
                add_no_flags, run_lm_eval),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:  # the harness's flags (its --device too) go to it unparsed
        return run_command(argparse.Namespace(command="lm-eval", debug=False, harness_arguments=argv[1:]))
    parser = build_parser(command_of(argv))
    args, extra = parser.parse_known_args(argv)
    if extra and args.command in ("train", "finetune") and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides += extra  # KEY=VALUE overrides may follow options: train ... --out X model.d_model=64
    elif extra:
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 0
    return run_command(args)


def flag_of(error: DDLMError, args: argparse.Namespace) -> str:
    """`` (--flag)``: the flag of this command that sets the field an error names, else nothing."""
    if error.field is None or error.field not in vars(args):
        return ""
    declared = None
    if vars(args).get("sampler_flags"):  # the command has the sampler flags, so ddlm.families is loaded already
        from ddlm.families import option_table

        declared = option_table().get(error.field)
    return f" ({declared.flag if declared is not None else '--' + error.field.replace('_', '-')})"


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; a DDLMError or Ctrl-C is one line (a traceback with --debug)."""
    try:
        if "threads" in vars(args):  # the commands that run a model
            from ddlm.device import set_threads

            set_threads(args.threads)
        return COMMANDS[args.command][2](args)
    except DDLMError as error:
        if args.debug:
            traceback.print_exc()
        print(f"error: {error}{flag_of(error, args)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
