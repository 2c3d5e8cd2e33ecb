"""Block diffusion, measured side by side: one-pass training against a loop over blocks, and
block-by-block sampling with its exact KV cache against 256-step masked ancestral sampling.

    python benchmarks/block_diffusion.py                      # untrained char-small-sized models
    python benchmarks/block_diffusion.py --masked runs/masked --block runs/block4 runs/block16

Three sections (``--sections``). Training: the time of one forward + backward pass of the block NELBO on a batch, computed
(a) in one pass over [x_t, x_0] with the block-causal pattern (``BlockDiffusion.loss``) and
(b) naively, one forward pass per block over the clean blocks before it and the noisy block;
both from the same draws, so the script also checks that they give the same loss.
Sampling: generated tokens per second and model calls for the same length, end-of-text
forbidden (``min_length``) so that every run generates every position. Speed does not depend
on the weights, so untrained models of the presets' shapes measure it as well as trained ones.
Clipped noise: the variance over noise draws of the training gradient on one held-out batch
(summed over parameters), with the full range of t and with clipped ranges; meaningful on
trained models (pass --block).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ddlm import DiffusionPipeline
from ddlm.data import builtin_text
from ddlm.device import describe_machine
from ddlm.processes import BlockDiffusion, Vocabulary
from ddlm.processes.block import block_causal_attention
from ddlm.tokenizers import build_tokenizer
from ddlm.training import load_config
from ddlm.training.trainer import build_model, build_run_process

CLIPS = ((0.3, 0.8), (0.45, 0.95), (0.2, 1.0))


def naive_loss(process: BlockDiffusion, model: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The block NELBO (sum over the batch) from one forward pass per block: the reference for the one-pass form."""
    batch, length = x0.shape
    size = process.block_size
    blocks = x0.reshape(-1, size)
    t = process.block_times(blocks.shape[0], x0.device, generator, clipped=False)
    xt = process.corrupt(blocks, t, generator).view(batch, length)
    nll = torch.zeros(x0.shape, device=x0.device)
    for start in range(0, length, size):
        end = start + size
        columns = torch.arange(end, device=x0.device)
        tokens = torch.cat((x0[:, :start], xt[:, start:end]), dim=1)
        logits = model(tokens, attention=block_causal_attention(columns, columns, size))[:, start:]
        nll[:, start:end] = process.masked_nll(logits, x0[:, start:end], xt[:, start:end])
    return process.nelbo_per_sequence(nll.view(-1, size), t).sum()


def time_training(block_size: int, batch: int, repeats: int) -> dict:
    config = load_config("char-block", overrides=[f"process.block_size={block_size}"])
    tokenizer = build_tokenizer("char", texts=[builtin_text("shakespeare")])
    process = build_run_process(config, tokenizer)
    model = build_model(config, tokenizer, process).train()
    length = config.data.context_length
    x0 = torch.randint(0, tokenizer.vocab_size - 3, (batch, length), generator=torch.Generator().manual_seed(0))
    x0 = x0.masked_fill(x0 == tokenizer.mask_id, 0)
    seconds = {"one pass": [], "loop over blocks": []}  # CPU time of this process: robust to a busy machine
    losses = {}
    for _ in range(repeats):
        for name in seconds:
            model.zero_grad()
            generator = torch.Generator().manual_seed(1)
            start = time.process_time()
            if name == "one pass":
                loss = process.loss(model, x0, generator).loss * int((x0 != tokenizer.pad_id).sum())
            else:
                loss = naive_loss(process, model, x0, generator)
            loss.backward()
            seconds[name].append(time.process_time() - start)
            losses[name] = float(loss.detach())
    one, loop = statistics.median(seconds["one pass"]), statistics.median(seconds["loop over blocks"])
    same = abs(losses["one pass"] - losses["loop over blocks"]) < 1e-3 * abs(losses["one pass"])
    return {"block": block_size, "batch": f"{batch} x {length}", "one pass s": one, "loop s": loop,
            "speed-up": loop / one, "same loss": same}


def gradient_variance(pipe: DiffusionPipeline, clip: tuple[float, float] | None, batch: int, draws: int) -> float:
    """Variance over ``draws`` noise draws of the gradient of the training loss on a held-out batch."""
    config = {**pipe.process.to_dict(), "clip_min": clip and clip[0], "clip_max": clip and clip[1]}
    process = BlockDiffusion.from_config(config, Vocabulary.of(pipe.tokenizer))
    length = pipe.context_length
    text = builtin_text("shakespeare")
    ids = pipe.tokenizer.encode(text[-batch * length * 2 :])[-batch * length :]
    x0 = torch.tensor(ids).view(batch, length)
    model = pipe.model.train()
    generator = torch.Generator().manual_seed(0)
    gradients = []
    for _ in range(draws):
        model.zero_grad()
        process.loss(model, x0, generator).loss.backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    model.eval()
    return float(torch.stack(gradients).var(dim=0).sum())


def untrained_pipeline(preset: str, overrides: list[str]) -> DiffusionPipeline:
    config = load_config(preset, overrides=overrides)
    tokenizer = build_tokenizer("char", texts=[builtin_text("shakespeare")])
    process = build_run_process(config, tokenizer)
    torch.manual_seed(0)
    return DiffusionPipeline(build_model(config, tokenizer, process), tokenizer, process)


def time_sampling(
    pipe: DiffusionPipeline, options: dict, samples: int, length: int, repeats: int
) -> tuple[float, float, int]:
    """Median generated tokens per second of wall time and of this process's CPU time (robust to
    other processes on a busy machine), and the model calls of one run."""
    seconds, cpu_seconds, calls = [], [], 0
    for repeat in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        output = pipe.sample(num_samples=samples, length=length, seed=repeat, min_length=length, **options)
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
        calls = output.model_calls
    tokens = samples * length
    return tokens / statistics.median(seconds), tokens / statistics.median(cpu_seconds), calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--masked", help="a trained masked model (default: untrained, char-small shape)")
    parser.add_argument("--block", nargs="*", default=[], help="trained block models (default: untrained, blocks of 4 and 16)")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--sections", nargs="+", default=["training", "sampling", "variance"],
                        choices=["training", "sampling", "variance"])
    args = parser.parse_args()
    print(f"machine: {describe_machine()}; torch threads: {torch.get_num_threads()}\n")

    if "training" in args.sections:
        print("| block size | batch | one pass (CPU s) | loop over blocks (CPU s) | speed-up | same loss |")
        print("|---|---|---|---|---|---|")
        for block_size in (4, 16):
            row = time_training(block_size, args.train_batch, args.repeats)
            print(f"| {row['block']} | {row['batch']} | {row['one pass s']:.3f} | {row['loop s']:.3f} | "
                  f"{row['speed-up']:.1f}x | {row['same loss']} |", flush=True)
        print()

    blocks = ([DiffusionPipeline.from_pretrained(path, device="cpu") for path in args.block] if args.block
              else [untrained_pipeline("char-block", [f"process.block_size={size}"]) for size in (4, 16)])
    if "variance" in args.sections:
        print(f"gradient variance over 16 noise draws, one held-out batch of {args.train_batch}, "
              f"{'trained' if args.block else 'untrained'} models\n")
        print("| block size | full range [eps, 1] | " + " | ".join(f"clipped [{a}, {b}]" for a, b in CLIPS) + " |")
        print("|---|---|" + "---|" * len(CLIPS))
        for pipe in blocks:
            full = gradient_variance(pipe, None, args.train_batch, 16)
            clipped = [gradient_variance(pipe, clip, args.train_batch, 16) / full for clip in CLIPS]
            print(f"| {pipe.process.block_size} | {full:.3g} | " + " | ".join(f"{ratio:.2f}x" for ratio in clipped) + " |",
                  flush=True)
        print()
    if "sampling" not in args.sections:
        return
    masked = DiffusionPipeline.from_pretrained(args.masked, device="cpu") if args.masked else untrained_pipeline("char-small", [])
    length = args.length
    rows = [("masked, ancestral, 256 steps, no cache (baseline)", masked, {"steps": 256, "use_cache": False})]
    for pipe in blocks:
        size = pipe.process.block_size
        one_step = length // size  # one step per block
        rows += [
            (f"block {size}, ancestral, 1 step per block, KV cache", pipe, {"steps": one_step}),
            (f"block {size}, ancestral, 1 step per block, no cache", pipe, {"steps": one_step, "use_cache": False}),
            (f"block {size}, ancestral, {size} steps per block, KV cache", pipe, {"steps": length}),
            (f"block {size}, confidence, {max(1, size // 4)} step(s) per block, KV cache", pipe,
             {"steps": max(one_step, length // 4), "policy": "confidence"}),
        ]
    print(f"sampling {args.samples} x {length} tokens, median of {args.repeats} runs\n")
    print("| sampler | model calls | tokens/s | vs baseline | tokens per CPU second | vs baseline |\n|---|---|---|---|---|---|")
    baseline = None
    for name, pipe, options in rows:
        speed, cpu_speed, calls = time_sampling(pipe, options, args.samples, length, args.repeats)
        baseline = baseline or (speed, cpu_speed)
        print(f"| {name} | {calls} | {speed:,.0f} | {speed / baseline[0]:.1f}x | {cpu_speed:,.0f} "
              f"| {cpu_speed / baseline[1]:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
