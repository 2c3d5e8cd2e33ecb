"""The worked fine-tuning example: the two bundled models taught to reply to a speech.

    nice -n 15 env OMP_NUM_THREADS=1 python experiments/finetune.py                # data, both fine-tunings, report
    python experiments/finetune.py --models shakespeare --lora-rank 8 --lr 1e-3 --out runs/finetune-lora

The SFT set comes from the built-in corpus: each speech is a prompt and the next speaker's speech
its response, as chat turns (``{"messages": [{"role": "ROMEO", ...}, {"role": "JULIET", ...}]}``),
which ddlm's plain chat template writes in the script's own layout (``NAME:\\ntext\\n\\n``): the
prompt ends with the replying speaker's name, and the model learns to write the reply and end it
with end-of-text. Pairs from the first 90% of the corpus train; pairs from the last 10%, which the
bundled models never saw, are held out. Each bundled model is fine-tuned for 300 steps of 8 examples at
peak learning rate 3e-4, a few minutes on one core (full fine-tuning, the library's other defaults), and
the held-out reply NELBO (nats per response character, its end-of-text included) is measured before and
after with the same draws, next to sample replies.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from ddlm import DiffusionPipeline
from ddlm.data import BUILTIN_HELD_OUT_FRACTION, builtin_text
from ddlm.data.sft import ChatFormat, SFTLoader, load_rows
from ddlm.device import describe_machine
from ddlm.fileio import write_json_atomic
from ddlm.training.finetune import FineTuneSettings, end_of_text_id, finetune, response_nelbo

ROOT = Path(__file__).resolve().parents[1]
SPEECH = re.compile(r"([A-Z][A-Za-z' ]*):\n(.+)", re.DOTALL)
CONTEXT = 256  # the bundled models' context, in characters
ROLES = ["ROMEO", "JULIET"]  # what `ddlm sample --chat` calls the prompt's and the reply's speakers


def speeches(text: str) -> list[tuple[int, str, str]]:
    """(offset, speaker, speech) of every speech of the script, in order."""
    found, offset = [], 0
    for block in text.split("\n\n"):
        match = SPEECH.fullmatch(block.strip("\n"))
        if match:
            found.append((offset, match.group(1), match.group(2)))
        offset += len(block) + 2
    return found


def dialogue_pairs(text: str) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows): a speech and the next speaker's reply, where the pair fits the context;
    held out when the reply lies in the corpus's last ``BUILTIN_HELD_OUT_FRACTION``."""
    chat, boundary = ChatFormat(), (1 - BUILTIN_HELD_OUT_FRACTION) * len(text)
    train, held_out = [], []
    found = speeches(text)
    for (start, speaker, speech), (end, replier, reply) in zip(found, found[1:]):
        messages = [{"role": speaker, "content": speech}, {"role": replier, "content": reply}]
        if speaker == replier or len(chat.prompt_text(messages) + chat.response_text(messages[-1])) + 1 > CONTEXT:
            continue
        if start >= boundary:
            held_out.append({"messages": messages})
        elif end + len(reply) < boundary:
            train.append({"messages": messages})
    return train, held_out


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def held_out_nelbo(pipe: DiffusionPipeline, model_name: str, valid: Path, draws: int) -> float:
    """Held-out reply NELBO per response token, the fine-tuning's own validation, with ``draws`` noise draws
    per row (one for the autoregressive model, whose figure is exact)."""
    end_id = end_of_text_id(model_name, pipe.tokenizer)
    rows = load_rows(valid, pipe.tokenizer, ChatFormat(), end_id, CONTEXT).rows
    loader = SFTLoader(rows, 64, end_id)
    draws = 1 if pipe.process.name == "ar" else draws
    batches = (batch for _ in range(draws) for batch in loader.iter_eval_batches())
    return response_nelbo(pipe.model, pipe.process, batches)


def replies(pipe: DiffusionPipeline, prompts: list[str]) -> list[str]:
    """One reply per prompt (96 positions, one per step for the diffusion model; seed 0), cut at end-of-text;
    one prompt at a time (an autoregressive batch needs prompts of one length)."""
    return [pipe.generate(prompt, length=96, steps=96, seed=0)[0][len(prompt):] for prompt in prompts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "finetune")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per model (default: 300)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step (default: 8)")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default: 3e-4)")
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA adapters of this rank (default: 0, full)")
    parser.add_argument("--held-out", type=int, default=200, help="held-out pairs scored, evenly spaced (default: 200)")
    parser.add_argument("--draws", type=int, default=2, help="noise draws per held-out pair (default: 2)")
    parser.add_argument("--samples", type=int, default=3, help="held-out prompts each model answers (default: 3)")
    parser.add_argument("--models", nargs="+", default=["shakespeare-ar", "shakespeare"])
    parser.add_argument("--data-only", action="store_true", help="write the .jsonl files and stop")
    args = parser.parse_args()

    train_rows, held_out_rows = dialogue_pairs(builtin_text("shakespeare"))
    held_out_rows = held_out_rows[:: max(1, len(held_out_rows) // args.held_out)][: args.held_out]
    train = write_rows(args.out / "data" / "train.jsonl", train_rows)
    valid = write_rows(args.out / "data" / "valid.jsonl", held_out_rows)
    print(f"{len(train_rows)} training pairs in {train}, {len(held_out_rows)} held out in {valid}", file=sys.stderr)
    if args.data_only:
        return
    chat = ChatFormat()
    prompts = [chat.prompt_text(row["messages"])
               for row in held_out_rows[:: max(1, len(held_out_rows) // args.samples)][: args.samples]]

    results = {"machine": describe_machine(), "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
               "lora_rank": args.lora_rank,
               "training_pairs": len(train_rows), "held_out_pairs": len(held_out_rows), "draws": args.draws, "models": {}}
    for name in args.models:
        out = args.out / name
        base = DiffusionPipeline.from_pretrained(name, device="cpu", precision="fp32")
        before = held_out_nelbo(base, name, valid, args.draws)
        started = time.perf_counter()
        settings = FineTuneSettings(chat_roles=ROLES, lora_rank=args.lora_rank)
        summary = finetune(name, train, out, device="cpu", settings=settings,
                           overrides=[f"optim.max_steps={args.steps}", f"optim.batch_size={args.batch_size}",
                                      f"optim.lr={args.lr}",
                                      "optim.precision=fp32", "data.valid_fraction=0"])  # scored below instead
        tuned = DiffusionPipeline.from_pretrained(out, device="cpu", precision="fp32")
        after = held_out_nelbo(tuned, name, valid, args.draws)
        results["models"][name] = {
            "held_out_nelbo_before": before, "held_out_nelbo_after": after, "steps": summary["steps"],
            "train_seconds": summary["train_seconds"], "wall_seconds": round(time.perf_counter() - started),
            "trainable_parameters": summary["trainable_parameters"],
            "samples": [{"prompt": prompt, "base": old, "fine_tuned": new}
                        for prompt, old, new in zip(prompts, replies(base, prompts), replies(tuned, prompts))],
        }
        print(f"{name}: held-out reply NELBO {before:.4f} -> {after:.4f} nats/char ({summary['steps']} steps)",
              file=sys.stderr)
        write_json_atomic(args.out / "results.json", results)
    print("| model | steps | held-out reply NELBO before | after |\n|---|---:|---:|---:|")
    for name, row in results["models"].items():
        print(f"| {name} | {row['steps']} | {row['held_out_nelbo_before']:.3f} | {row['held_out_nelbo_after']:.3f} |")


if __name__ == "__main__":
    main()
