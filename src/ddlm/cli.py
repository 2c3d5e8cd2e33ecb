"""The ``ddlm`` command: a thin layer over the trainer and the pipeline."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import traceback
from collections.abc import Sequence

from ddlm.errors import DDLMError

EXIT_USAGE = 2


def parse_duration(text: str) -> float:
    """Seconds in '600', '90s', '10m', '1.5h'."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}; write e.g. 600, 90s, 10m or 1.5h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    common.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")

    parser = argparse.ArgumentParser(prog="ddlm", description="Train and sample discrete diffusion language models.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", parents=[common], help="train a model on a text corpus")
    train.add_argument("--data", help="training text: a .txt file, a folder of .txt files, or a .jsonl file")
    train.add_argument("--valid", help="validation text (default: hold out data.valid_fraction of --data)")
    train.add_argument("--out", required=True, help="run directory; it becomes the model directory")
    train.add_argument("--preset", help="a named configuration (see `ddlm presets`)")
    train.add_argument("--config", help="a YAML configuration file")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings such as optim.lr=3e-4")
    train.add_argument("--resume", action="store_true", help="continue the run saved in --out exactly")
    train.add_argument("--max-steps", type=int, help="total optimizer steps (sets optim.max_steps)")
    train.add_argument("--time-budget", type=parse_duration, help="training time, e.g. 10m (sets optim.time_budget)")
    train.add_argument("--stop-after", type=int, metavar="STEP", help="stop at this step; continue later with --resume")
    train.add_argument("--cache-dir", help="where tokenised corpora are cached (default: ~/.cache/ddlm)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    sample = commands.add_parser("sample", parents=[common], help="generate text from a model directory")
    sample.add_argument("--model", required=True, help="model directory written by `ddlm train`")
    sample.add_argument("--prompt", help="text the samples start with (kept fixed)")
    sample.add_argument("-n", "--num-samples", type=int, default=1)
    sample.add_argument("--length", type=int, help="tokens to generate (default: fill the context)")
    sample.add_argument("--steps", type=int, default=128, help="denoising steps (default: 128)")
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--top-k", type=int)
    sample.add_argument("--top-p", type=float)
    sample.add_argument("--seed", type=int)
    sample.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    sample.add_argument("--no-cache", action="store_true", help="call the model at every step")
    sample.add_argument("--method", help="sampler variant where the process has several (SEDD: analytic, euler)")
    sample.add_argument("--format", choices=["text", "jsonl"], default="text")

    commands.add_parser("presets", parents=[common], help="list the named configurations")
    return parser


def run_train(args: argparse.Namespace) -> int:
    from ddlm.training import load_config, prepare_training, saved_config

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
        if args.max_steps is None:
            config.optim.max_steps = 10**9  # the time budget decides
    trainer = prepare_training(
        config, args.out, data=args.data, valid=args.valid, resume=args.resume, device=args.device,
        cache_dir=args.cache_dir, show_progress=not args.no_progress,
    )
    main_process = trainer.dist.is_main
    if main_process:
        print(f"model: {trainer.model.num_parameters():,} parameters, vocabulary {trainer.tokenizer.vocab_size}",
              file=sys.stderr)
    try:
        summary = trainer.train(stop_after=args.stop_after)
    except KeyboardInterrupt:
        if main_process:
            print(f"interrupted at step {trainer.state.step}; continue with --resume", file=sys.stderr)
        return 130
    if not main_process:
        return 0
    if "final_valid_nelbo" in summary:
        nats = summary["final_valid_nelbo"]
        print(f"validation NELBO: {nats:.4f} nats/token, {nats / math.log(2):.4f} bits/token, "
              f"perplexity <= {math.exp(nats):.2f}")
    print(f"model saved to {args.out} ({summary['steps']} steps, {summary['train_seconds']:.0f} s)")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    from ddlm import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(args.model, device=args.device, precision=args.precision)
    texts = pipe.generate(
        args.prompt, num_samples=args.num_samples, length=args.length, steps=args.steps,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        use_cache=not args.no_cache, **({"method": args.method} if args.method else {}),
    )
    for index, text in enumerate(texts):
        if args.format == "jsonl":
            print(json.dumps({"index": index, "prompt": args.prompt, "text": text}, ensure_ascii=False))
        else:
            if index:
                print("\n" + "-" * 40)
            print(text)
    return 0


def run_presets(args: argparse.Namespace) -> int:
    from ddlm.training import preset_names

    print("\n".join(preset_names()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"train": run_train, "sample": run_sample, "presets": run_presets}
    try:
        return handlers[args.command](args)
    except DDLMError as error:
        if args.debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
