"""Train and export the bundled models, with their model cards: `shakespeare-ar` from scratch, then
`shakespeare` (masked diffusion) and `shakespeare-block` (block diffusion) adapted from its exported weights.

    python experiments/train_bundled.py                                # all: train, then export
    python experiments/train_bundled.py --only shakespeare-block       # one of them
    python experiments/train_bundled.py --export-only                  # export runs/bundled/* again

Each model trains on the first 90% of the built-in tiny Shakespeare with its configuration in
experiments/bundled/NAME.yaml, for a fixed time, one CPU thread each (the published adapted models:
their first hours side by side on a 2-core machine, then the masked one alone). The
export then scores the whole held-out 10% with the EMA weights in float32 and in bfloat16 (same
noise draws), keeps bf16 when the two NELBOs differ by less than 0.005 nats, measures the share of
real words in samples drawn with the model's sampler defaults and writes the model directory, with
those defaults (sampler_config.json) and a model card, into src/ddlm/bundled/NAME.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ddlm import DiffusionPipeline
from ddlm.data import builtin_text
from ddlm.device import describe_machine
from ddlm.eval.diversity import unigram_entropy
from ddlm.eval.likelihood import evaluate_likelihood, left_to_right_likelihood
from ddlm.eval.report import evaluation_rows
from ddlm.training.checkpoint import CHECKPOINT_FILE

sys.path.insert(0, str(Path(__file__).parent))
from real_words import real_word_share, words  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BF16_TOLERANCE = 0.005  # nats per token
PROMPT = "ROMEO:"


@dataclass(frozen=True)
class Stage:
    """Train until ``minutes`` of training in all, or until step ``stop_after``. A later stage resumes
    the run with a longer budget, restarting the cosine from where the longer schedule stands (a
    warm restart), with peak ``lr`` if given. The stage pauses at each step of ``average`` (an
    exact stop and resume) to keep the EMA weights there; the bundled weights are their mean."""

    minutes: float
    lr: float | None = None
    stop_after: int | None = None
    average: tuple[int, ...] = ()


# The published runs. shakespeare-ar: 80 minutes, then a warm restart of the cosine (the learning rate
# jumps back up to where the longer schedule stands and decays again) towards 210 minutes with peak
# lr 1e-3, stopped at step 6,000, its best logged validation (it overfits after), averaging the EMA
# weights of its last 2,000 steps. shakespeare-block: 60 minutes from the AR model's weights (the
# adaptation budget of issue #25). shakespeare: the same hour as masked diffusion, then a warm restart
# towards 170 minutes with peak lr 1e-3.
MODELS = {"shakespeare-ar": (Stage(80), Stage(210, lr=1e-3, stop_after=6000, average=(4000, 4500, 5000, 5500, 6000))),
          "shakespeare": (Stage(60), Stage(170, lr=1e-3)),
          "shakespeare-block": (Stage(60),)}
INIT = {"shakespeare": "shakespeare-ar", "shakespeare-block": "shakespeare-ar"}  # ddlm train --init: its source
# How each model samples unless told otherwise (its sampler_config.json), the settings its card's figures use.
# The block model, adapted from the AR one, writes one token per step (256 steps over blocks of 4) left to right,
# the order its weights learned first: about 95% real words, against 75% by confidence and about 45% at two
# tokens per step or in random order (ancestral).
SAMPLER_DEFAULTS = {"shakespeare": {"steps": 256, "temperature": 0.8},
                    "shakespeare-ar": {"temperature": 0.8},
                    "shakespeare-block": {"policy": "left-to-right", "steps": 256, "temperature": 0.8}}
KEPT = "averaged"  # the run directory's folder of kept EMA weights, one file per step


def train(name: str, threads: int) -> int:
    """Run ``ddlm train`` for one bundled model, stage after stage; the exit status of the last."""
    out = ROOT / "runs" / "bundled" / name
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    first = True
    with open(out.parent / f"{name}.log", "w") as log:
        for stage in MODELS[name]:
            for stop in (*stage.average, stage.stop_after):
                command = ["ddlm", "train", "--out", str(out), "--time-budget", f"{stage.minutes}m", "--no-progress"]
                if first:
                    command += ["--config", str(ROOT / "experiments" / "bundled" / f"{name}.yaml"), "--data", "shakespeare"]
                    command += ["--init", INIT[name]] if name in INIT else []
                else:
                    command += ["--resume"]
                command += [f"optim.lr={stage.lr}"] if stage.lr is not None else []
                command += ["--stop-after", str(stop)] if stop is not None else []
                status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
                if status:
                    return status
                first = False
                if stop in stage.average:
                    keep_ema_weights(out, stop)
    return 0


def keep_ema_weights(run: Path, step: int) -> None:
    """Copy the EMA weights of the run's checkpoint (taken at ``step``) into the run's KEPT folder."""
    prefix = "ema/shadow/"
    with safe_open(run / CHECKPOINT_FILE, "pt") as checkpoint:
        weights = {key[len(prefix):]: checkpoint.get_tensor(key) for key in checkpoint.keys() if key.startswith(prefix)}
    (run / KEPT).mkdir(exist_ok=True)
    save_file(weights, run / KEPT / f"step-{step}.safetensors")


def average_kept_weights(pipe: DiffusionPipeline, run: Path) -> list[int]:
    """Load the mean of the run's kept EMA weights into ``pipe.model``; the steps averaged (none: unchanged)."""
    kept = sorted((int(path.stem.removeprefix("step-")), path) for path in (run / KEPT).glob("step-*.safetensors"))
    if not kept:
        return []
    total: dict[str, torch.Tensor] = {}
    for _, path in kept:
        for key, value in load_file(path).items():
            total[key] = total.get(key, 0) + value.double()
    pipe.model.load_state_dict({key: (value / len(kept)).float() for key, value in total.items()})
    return [step for step, _ in kept]


def held_out_nelbo(pipe: DiffusionPipeline, draws: int) -> tuple[float, float]:
    """NELBO (nats/char) and its standard error on the whole held-out 10%, fp32 arithmetic."""
    rows = evaluation_rows(pipe, "shakespeare", max_sequences=0)
    result = evaluate_likelihood(pipe.model, pipe.process, rows, pipe.tokenizer.byte_lengths(), draws=draws, seed=0)
    return result.nats_per_token, result.standard_error


def sample_figures(pipe: DiffusionPipeline) -> dict:
    """Real-word share and entropy with the model's sampler defaults (experiments/real_words.py's count), and one
    sample."""
    vocabulary = set(words(builtin_text("shakespeare")))
    output = pipe.sample(PROMPT, num_samples=16, length=224, seed=0)
    texts = [pipe.decode(output, row) for row in range(16)]
    entropy = sum(unigram_entropy(output.tokens[row][output.canvas.generated[row]].tolist()) for row in range(16)) / 16
    return {"real_words": real_word_share([text[len(PROMPT):] for text in texts], vocabulary),
            "entropy": entropy, "sample": texts[0]}


def export(name: str) -> dict:
    """Score the run's EMA weights in fp32 and bf16 and write the bundled model directory."""
    run = ROOT / "runs" / "bundled" / name
    pipe = DiffusionPipeline.from_pretrained(run, device="cpu", precision="fp32")
    pipe.sampler_defaults = SAMPLER_DEFAULTS[name]
    averaged = average_kept_weights(pipe, run)
    draws = 1 if pipe.process.name == "ar" else 8
    fp32_state = {key: value.clone() for key, value in pipe.model.state_dict().items()}
    nelbo_fp32, error = held_out_nelbo(pipe, draws)
    bf16_state = {key: value.to(torch.bfloat16) for key, value in fp32_state.items()}
    pipe.model.load_state_dict(bf16_state)  # rounds the fp32 model's weights to bf16 values
    nelbo_bf16, _ = held_out_nelbo(pipe, draws)
    use_bf16 = abs(nelbo_bf16 - nelbo_fp32) < BF16_TOLERANCE
    if not use_bf16:
        pipe.model.load_state_dict(fp32_state)
    figures = {"averaged": averaged, "nelbo_fp32": nelbo_fp32, "nelbo_bf16": nelbo_bf16, "standard_error": error, "draws": draws,
               "weights": "bf16" if use_bf16 else "fp32", **sample_figures(pipe)}
    if pipe.process.name != "ar" and SAMPLER_DEFAULTS[name].get("policy") == "left-to-right":
        # the exact NLL of the order its sampler writes in (costly for a masked model: a call per character)
        figures["left_to_right"] = left_to_right_likelihood(pipe, evaluation_rows(pipe, "shakespeare", max_sequences=0))
    pipe.summary = {**pipe.summary, "held_out_nelbo": nelbo_bf16 if use_bf16 else nelbo_fp32,
                    "held_out_standard_error": error, "real_words_t08": figures["real_words"]}
    target = ROOT / "src" / "ddlm" / "bundled" / name
    pipe.save_pretrained(target, weights=bf16_state if use_bf16 else fp32_state)
    history = json.loads((run / "run.json").read_text()).get("history", [])
    (target / "README.md").write_text(model_card(name, pipe.summary, figures, history), encoding="utf-8")
    return figures


def model_card(name: str, summary: dict, figures: dict, history: list[dict]) -> str:
    """The model directory's README.md; ``history``: the run's resumptions with changed settings (run.json)."""
    config = summary["run_config"]
    model, optim = config["model"], config["optim"]
    process = config["process"]["name"]
    kind = {"ar": "an autoregressive (causal)", "masked": "a masked-diffusion (linear schedule)",
            "block": f"a block-diffusion (blocks of {config['process'].get('block_size')})"}[process]
    unit = "NLL (exact)" if process == "ar" else f"NELBO ({figures['draws']} stratified time draws per row)"
    sampler = sampler_words(SAMPLER_DEFAULTS[name])
    context = config["data"]["context_length"]
    conditioning = f", adaLN noise conditioning (width {model['cond_dim']})" if model.get("time_conditioning") else ""
    rows = {
        "data": "the first 90% of the built-in tiny Shakespeare (1,003,854 characters; 65 characters + 3 special ids)",
        "backbone": f"{summary['parameters']:,} parameters: {model['n_layers']} layers, width {model['d_model']}, "
                    f"{model['n_heads']} heads, context {context}, dropout {model['dropout']}{conditioning}",
        "training": f"{summary['steps']:,} steps of {optim['batch_size']} x {context} characters ({summary['tokens']:,} tokens), "
                    f"{summary['train_seconds'] / 60:.0f} minutes, AdamW, cosine learning rate by time, EMA {optim['ema']}, "
                    f"{summary['precision']} autocast; " + schedule_history(optim, history) + early_stop_words(summary, optim),
        **({"adapted from": f"the bundled `{config['init']['source']}` (fingerprint {config['init']['fingerprint']}): "
                            "its weights under the shift (position i-1 predicts token i), no noise conditioning"}
           if config.get("init") else {}),
        "machine": f"{summary['machine']}{native_bf16_words(summary)}; " + (
            "one thread, with other work (another training run, tests) on the other core" if config.get("init") else
            "trained side by side with another model from scratch, one thread each, sharing the 2 cores with other work")
                   + f" ({summary['tokens'] / summary['train_seconds']:,.0f} tokens/s on average)",
        "sampler defaults": f"{sampler} (`sampler_config.json`; flags and options replace them)",
        f"held-out {unit}": f"**{summary['held_out_nelbo']:.4f} nats/char** (± {figures['standard_error']:.4f}) "
                            "on the last 10% of the corpus",
        **({"held-out NLL left to right (exact)": f"**{figures['left_to_right'].nats_per_token:.4f} nats/char** "
            f"(± {figures['left_to_right'].standard_error:.4f}): written one token per step from the left"
            f"{' of each block' if process == 'block' else ''}, "
            "the order of its sampler defaults, at temperature 1 (`ddlm eval --metrics left-to-right`)"}
           if "left_to_right" in figures else {}),
        "weights": f"{figures['weights']} safetensors{averaged_words(figures['averaged'])}: "
                   f"held-out {figures['nelbo_fp32']:.4f} with fp32 weights, "
                   f"{figures['nelbo_bf16']:.4f} with bf16 weights",
        "real words": f"{figures['real_words']:.1%} of generated words occur in the training text ({sampler}, 16 samples of "
                      f"224 characters after `{PROMPT}`; unigram entropy {figures['entropy']:.3f} nats)",
    }
    table = "\n".join(f"| {label} | {value} |" for label, value in rows.items())
    return f"""# {name}

{kind[0].upper()}{kind[1:]} character-level language model bundled with ddlm: `ddlm sample --model {name}`.

| | |
|---|---|
{table}

Reproduce: `python experiments/train_bundled.py --only {name}` (trains the model, then exports it here).
Evaluation on this machine: {describe_machine()}.

A sample (seed 0, {sampler}):

```
{figures['sample']}
```
"""


def sampler_words(defaults: dict) -> str:
    """A model's sampler defaults in words: "confidence, 256 steps, temperature 0.8"."""
    words = [defaults.get("policy", "ancestral")] if "steps" in defaults else []
    words += [f"{defaults['steps']} steps"] if "steps" in defaults else []
    return ", ".join([*words, f"temperature {defaults.get('temperature', 1.0):g}"])


def native_bf16_words(summary: dict) -> str:
    """", which multiplies bf16 natively" for a run whose `precision: auto` picked bf16, as it does only on such a
    machine (in the same minutes about 1.5x the steps of fp32); "" otherwise."""
    chosen = summary["run_config"]["optim"].get("precision", "auto")
    return ", which multiplies bf16 natively" if summary["precision"] == "bf16" and chosen == "auto" else ""


def averaged_words(steps: list[int]) -> str:
    """How the bundled weights were made from the kept EMA weights, in words ("" when not averaged)."""
    if not steps:
        return ""
    return f", the mean of the EMA weights at steps {', '.join(f'{step:,}' for step in steps)}"


def early_stop_words(summary: dict, optim: dict) -> str:
    """", stopped at step N ..." when the run ended well before its time budget ("" otherwise)."""
    budget = optim.get("time_budget")
    if not budget or summary["train_seconds"] >= 0.99 * budget:
        return ""
    return f"; stopped at step {summary['steps']:,}, before the budget's end (its best logged validation)"


def schedule_history(optim: dict, history: list[dict]) -> str:
    """The learning-rate schedule in words: the first peak and each resumption that changed it."""
    changes = [entry for entry in history if {"optim.lr", "optim.time_budget"} & set(entry["changes"])]
    first_lr = changes[0]["changes"]["optim.lr"][0] if changes and "optim.lr" in changes[0]["changes"] else optim["lr"]
    words = [f"peak lr {first_lr:g}"]
    for entry in changes:
        before, budget = entry["changes"].get("optim.time_budget", [optim["time_budget"], optim["time_budget"]])
        lr = entry["changes"].get("optim.lr", [None, None])[1]
        change, effect = ("extended", "a warm restart of the cosine") if budget > before else ("cut", "a cool-down at its tail")
        words.append(f"resumed at step {entry['step']:,} with the budget {change} to {budget / 60:.0f} minutes"
                     + (f" and peak lr {lr:g}" if lr is not None else "") + f" ({effect})")
    return ", ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export-only", action="store_true", help="export the finished runs in runs/bundled")
    parser.add_argument("--only", choices=sorted(MODELS), help="one model instead of all")
    args = parser.parse_args()
    names = [args.only] if args.only else list(MODELS)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))  # all cores unless told
    # the models from scratch first (side by side), then those adapted from their exported weights
    for group in ([name for name in names if name not in INIT], [name for name in names if name in INIT]):
        if group and not args.export_only:
            (ROOT / "runs" / "bundled").mkdir(parents=True, exist_ok=True)
            with ThreadPoolExecutor(len(group)) as pool:  # side by side, one thread each
                if any(pool.map(lambda name: train(name, threads=1), group)):
                    sys.exit(f"training failed; see {ROOT / 'runs' / 'bundled'}/*.log")
        for name in group:
            figures = export(name)
            print(f"{name}: held-out {figures['nelbo_fp32']:.4f} (fp32 weights) / {figures['nelbo_bf16']:.4f} (bf16), "
                  f"real words {figures['real_words']:.1%}, kept {figures['weights']}")

if __name__ == "__main__":
    main()
