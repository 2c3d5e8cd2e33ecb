"""Judges: language models that score samples, for generative perplexity.

A judge is an autoregressive model directory of this project, or a local Hugging Face causal
LM directory (loaded with ``transformers``, the optional ``hf`` extra). Samples are re-tokenised
with the judge's own tokenizer, so any model can be judged by any judge.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch

from ddlm.bundled import bundled_model_path
from ddlm.errors import DDLMError


class Judge(ABC):
    """Scores texts: ``nll(texts)`` is (total nats, judge tokens) of the texts under the judge."""

    name: str

    @abstractmethod
    def nll(self, texts: Sequence[str]) -> tuple[float, int]:
        """Total NLL (nats) of ``texts`` and the number of judge tokens it covers."""

    def mean_nll(self, texts: Sequence[str]) -> float:
        """Mean NLL per judge token (nats); exp of it is the generative perplexity."""
        texts = [text for text in texts if text]
        if not texts:
            raise DDLMError("no text to judge: every sample is empty")
        total, count = self.nll(texts)
        return total / count


class DDLMJudge(Judge):
    """An autoregressive model directory of this project."""

    def __init__(self, pipe, batch_size: int = 16):
        if pipe.process.name != "ar":
            raise DDLMError(f"the judge must be an autoregressive model (process ar), not {pipe.process.name!r}")
        self.pipe, self.batch_size, self.name = pipe, batch_size, "ddlm-ar"

    @torch.no_grad()
    def nll(self, texts: Sequence[str]) -> tuple[float, int]:
        tokenizer, context = self.pipe.tokenizer, self.pipe.context_length
        rows = [tokenizer.encode(text)[:context] for text in texts]
        total, count = 0.0, 0
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            x0 = torch.full((len(chunk), max(len(row) for row in chunk)), tokenizer.pad_id, dtype=torch.long)
            for index, row in enumerate(chunk):
                x0[index, : len(row)] = torch.tensor(row, dtype=torch.long)
            loss = self.pipe.process.loss(self.pipe.model, x0.to(self.pipe.device))
            total += loss.nelbo_sum
            count += loss.num_tokens
        return total, count


class HFJudge(Judge):
    """A local Hugging Face causal language model directory (for example GPT-2)."""

    def __init__(self, directory: str | Path):
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise DDLMError("judging with a Hugging Face model needs transformers: pip install 'ddlm[hf]'") from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True).eval()
        except (OSError, ValueError) as error:
            first = str(error).strip().splitlines()[0]
            raise DDLMError(f"cannot load a causal language model from {directory} ({first})") from None
        self.name = f"hf:{Path(directory).name}"
        self.context = getattr(self.model.config, "n_positions", None) or self.model.config.max_position_embeddings

    @torch.no_grad()
    def nll(self, texts: Sequence[str]) -> tuple[float, int]:
        start_id = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        total, count = 0.0, 0
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.context - 1]
            inputs = torch.tensor([[start_id, *ids]])
            log_probs = self.model(inputs).logits[0, :-1].float().log_softmax(dim=-1)
            total -= float(log_probs.gather(-1, torch.tensor(ids)[:, None]).sum())
            count += len(ids)
        return total, count


def load_judge(path: str | Path) -> Judge:
    """A ddlm autoregressive model directory, or else a Hugging Face causal LM directory."""
    directory = Path(path)
    if not directory.is_dir() and bundled_model_path(str(path)) is not None:
        directory = bundled_model_path(str(path))
    if not directory.is_dir():
        raise DDLMError(f"judge directory {path} not found; pass a ddlm AR model or a local Hugging Face model")
    config_path = directory / "config.json"
    try:
        is_ddlm = json.loads(config_path.read_text(encoding="utf-8")).get("library") == "ddlm"
    except (OSError, ValueError):
        is_ddlm = False
    if is_ddlm:
        from ddlm.pipeline import DiffusionPipeline

        return DDLMJudge(DiffusionPipeline.from_pretrained(directory))
    return HFJudge(directory)


def default_judge(pipes: Sequence) -> Judge | None:
    """The bundled autoregressive model, when it is installed and shares every model's vocabulary."""
    from ddlm.bundled import DEFAULT_JUDGE
    from ddlm.pipeline import DiffusionPipeline

    directory = bundled_model_path(DEFAULT_JUDGE)
    if directory is None or not (directory / "model.safetensors").is_file():
        return None
    judge = DiffusionPipeline.from_pretrained(directory)
    if any(pipe.tokenizer.fingerprint() != judge.tokenizer.fingerprint() for pipe in pipes):
        return None
    return DDLMJudge(judge)
