"""``ddlm eval``: every metric for one model on one text, as a JSON-ready dict and a markdown row."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddlm.data import BatchLoader, HFSelection, held_out_corpus
from ddlm.data.zero_shot import evaluation_source
from ddlm.errors import DDLMError
from ddlm.eval.diversity import distinct_n, repetition_rate, unigram_entropy
from ddlm.eval.judge import Judge
from ddlm.eval.likelihood import evaluate_likelihood, left_to_right_likelihood
from ddlm.families import get_family
from ddlm.samplers import SampleOutput, SamplerStep

METRICS = ("likelihood", "left-to-right", "samples")


@dataclass
class EvalSettings:
    """What ``ddlm eval`` measures and how; recorded in its JSON output."""

    metrics: tuple[str, ...] = METRICS
    draws: int = 16  # NELBO time draws per sequence
    max_sequences: int = 64  # held-out rows scored (0: all)
    num_samples: int = 16
    # the sampler options set (steps, policy, seed, ...): each model's own defaults fill in the rest
    sampler: dict[str, Any] = field(default_factory=lambda: {"seed": 0})
    seed: int = 0  # of the NELBO time draws
    detokenizer: str | None = None  # of the held-out text (ddlm.data.zero_shot.DETOKENIZERS); a corpus's own if None


def evaluation_rows(pipe, data: str | Path, max_sequences: int, cache_dir: str | Path | None = None,
                    detokenizer: str | None = None) -> list[torch.Tensor]:
    """Rows of the model's context length from ``data``, tokenised with the model's tokenizer.

    A built-in corpus name means its held-out tail (``ddlm.data.held_out_corpus``); a zero-shot
    corpus's name (``ddlm.data.zero_shot``) its split, detokenised; a Hugging Face data set is
    read with the model's data settings, in its ``hf_valid_split``. ``detokenizer`` names the
    detokeniser to read the text through (a zero-shot corpus's own by default).
    """
    settings = pipe.summary.get("run_config", {}).get("data", {})
    selection = HFSelection(settings.get("hf_config"), settings.get("hf_valid_split", "validation"),
                            settings.get("hf_field", "text"))
    source, _ = evaluation_source(data, settings.get("separator"), selection, detokenizer)
    corpus = held_out_corpus(source, pipe.tokenizer, cache_dir)
    context = pipe.context_length
    if len(corpus) < context:
        raise DDLMError(f"{data} holds {len(corpus)} tokens, fewer than one row of {context}; use a longer text")
    loader = BatchLoader(corpus, 1, context, pad_id=pipe.tokenizer.pad_id, seed=0)
    rows = [batch[0] for batch in loader.iter_eval_batches(1)]
    if max_sequences and len(rows) > max_sequences:
        stride = len(rows) / max_sequences  # spread over the whole text
        rows = [rows[int(i * stride)] for i in range(max_sequences)]
    return rows


Progress = Callable[[str, int, str], Callable[..., Any]]  # (what, total, unit) -> tick(amount=1)


def evaluate(pipe, data: str | Path | None, judge: Judge | None, settings: EvalSettings,
             progress: Progress | None = None) -> dict:
    """Every requested metric of ``pipe`` as a JSON-ready dict; ``progress`` makes a bar per stage."""
    unknown = set(settings.metrics) - set(METRICS)
    if unknown:
        raise DDLMError(f"unknown metric {', '.join(sorted(unknown))}; choose from {list(METRICS)}")
    result: dict[str, Any] = {"process": pipe.process.name, "parameters": pipe.model.num_parameters(),
                              "settings": {**asdict(settings), "metrics": list(settings.metrics)}}
    scored = [metric for metric in ("likelihood", "left-to-right") if metric in settings.metrics]
    if scored and data is None:
        raise DDLMError(f"the {scored[0]} metric needs held-out text: pass --data (e.g. --data shakespeare)")
    rows = evaluation_rows(pipe, data, settings.max_sequences, detokenizer=settings.detokenizer) if scored else []
    if "likelihood" in settings.metrics:
        tick = progress("likelihood", len(rows), "sequences") if progress else None
        likelihood = evaluate_likelihood(pipe.model, pipe.process, rows, pipe.tokenizer.byte_lengths(),
                                         settings.draws, settings.seed, pipe.precision, tick)
        result["likelihood"] = likelihood.to_dict()
    if "left-to-right" in settings.metrics:
        tick = progress("left to right", len(rows), "sequences") if progress else None
        result["left_to_right"] = left_to_right_likelihood(pipe, rows, tick).to_dict()
    if "samples" in settings.metrics:
        tick = progress("sampling", settings.num_samples, "samples") if progress else None
        result["samples"] = sample_metrics(pipe, judge, settings, tick)
    return result


def sample_metrics(pipe, judge: Judge | None, settings: EvalSettings,
                   tick: Callable[[float], Any] | None = None) -> dict:
    """Speed, diversity and (with a judge) generative perplexity of unconditional samples; ``tick`` with the
    samples' progress at each step (see :func:`counted`)."""
    family = get_family(pipe.process.name)  # one command may compare models of several processes
    options = pipe.sampler_options(**{name: value for name, value in settings.sampler.items() if name in family.offered()})
    start = time.perf_counter()
    steps = pipe.stream(options=options, num_samples=settings.num_samples, texts=False)
    output = SampleOutput.of_stream(counted(steps, tick), pipe.tokenizer.pad_id)
    seconds = time.perf_counter() - start
    texts = [pipe.decode(output, row) for row in range(settings.num_samples)]
    ids = [pipe.tokenizer.encode(text) for text in texts]
    generated = int(output.canvas.generated.sum())
    metrics = {
        "sampler": family.applicable(options),  # the options that apply to this model's sampler
        "model_calls": output.model_calls,
        "seconds": seconds,
        "tokens_per_second": generated / seconds,
        "unigram_entropy": statistics.mean(unigram_entropy(row) for row in ids),
        "distinct_1": distinct_n(ids, 1),
        "distinct_2": distinct_n(ids, 2),
        "distinct_3": distinct_n(ids, 3),
        "repetition_4": statistics.mean(repetition_rate(row, 4) for row in ids),
        "examples": texts[:3],
    }
    if judge is not None:
        nll = judge.mean_nll(texts)
        metrics.update(judge=judge.name, judge_nll=nll, generative_perplexity=math.exp(nll))
    return metrics


def counted(steps: Iterable[SamplerStep], tick: Callable[[float], Any] | None) -> Iterator[SamplerStep]:
    """``steps`` unchanged, calling ``tick`` (a bar over the samples) with the progress each step makes: finished
    batches count whole, the current one by how much of its noise is gone (never backwards, as under remasking)."""
    done = 0.0
    for step in steps:
        reached = step.first_sample + step.tokens.shape[0] * (1 - step.noise)
        if tick is not None and reached > done:
            tick(reached - done)
            done = reached
        yield step


def likelihood_cells(like: dict) -> list[str]:
    bound = "=" if like["exact"] else "<="
    return [f"{like['nats_per_token']:.4f} ± {like['standard_error']:.4f}", f"{like['bits_per_token']:.4f}",
            f"{bound} {like['perplexity']:.2f}", f"{like['bits_per_byte']:.4f}"]


def left_to_right_cells(left_to_right: dict) -> list[str]:
    return [f"{left_to_right['nats_per_token']:.4f} ± {left_to_right['standard_error']:.4f}",
            f"{left_to_right['bits_per_byte']:.4f}"]


def sample_cells(samples: dict) -> list[str]:
    return [f"{samples['generative_perplexity']:.2f}" if "generative_perplexity" in samples else "",
            f"{samples['unigram_entropy']:.3f}", "/".join(f"{samples[f'distinct_{n}']:.2f}" for n in (1, 2, 3)),
            f"{samples['repetition_4']:.3f}", str(samples["model_calls"]), f"{samples['tokens_per_second']:,.0f}"]


# The table's column groups: a result's key, the group's headers, its cells.
TABLE_GROUPS = (
    ("likelihood", ["NELBO nats/token (± s.e.)", "bits/token", "PPL", "bits/byte"], likelihood_cells),
    ("left_to_right", ["left-to-right NLL nats/token (± s.e.)", "bits/byte"], left_to_right_cells),
    ("samples", ["gen. PPL", "entropy", "distinct-1/2/3", "rep-4", "calls", "tokens/s"], sample_cells),
)


def markdown_table(results: dict[str, dict]) -> str:
    """One row per model; a group of columns (likelihood, left to right, samples) only where some model has it."""
    groups = [group for group in TABLE_GROUPS if any(result.get(group[0]) for result in results.values())]
    header = ["model", "process", *(title for _, titles, _ in groups for title in titles)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in results.items():
        cells = [name, result["process"]]
        for key, titles, format_cells in groups:
            cells += format_cells(result[key]) if result.get(key) else [""] * len(titles)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
