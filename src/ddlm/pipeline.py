"""DiffusionPipeline: model + tokenizer + process + sampler, saved as one directory.

A model directory holds ``config.json``, ``model.safetensors`` (EMA weights by
default), the tokenizer files and ``training_summary.json``: the layout the Hugging
Face Hub hosts. Loading never unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ddlm import __version__
from ddlm.device import autocast, resolve_device, resolve_precision
from ddlm.errors import DDLMError
from ddlm.fileio import atomic_path, write_json_atomic
from ddlm.model import ModelConfig, Transformer
from ddlm.processes import Process, Vocabulary, build_process
from ddlm.samplers import Canvas, SampleOutput, SamplingOptions, parse_template, run_sampler
from ddlm.tokenizers import Tokenizer, load_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SUMMARY_FILE = "training_summary.json"


class DiffusionPipeline:
    """Generate text with a trained model: ``DiffusionPipeline.from_pretrained(dir).generate()``."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        process: Process,
        summary: dict[str, Any] | None = None,
        precision: str = "fp32",
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.process = process
        self.summary = summary or {}
        self.precision = resolve_precision(precision, self.device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    # ----- saving and loading -----

    def save_pretrained(self, directory: str | Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Write the model directory; ``weights`` (e.g. the EMA) replace the model's own."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = weights if weights is not None else self.model.state_dict()
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
        write_json_atomic(directory / CONFIG_FILE, {
            "library": "ddlm",
            "ddlm_version": __version__,
            "model": self.model.config.to_dict(),
            "process": self.process.to_dict(),
        })
        self.tokenizer.save(directory)
        if self.summary:
            write_json_atomic(directory / SUMMARY_FILE, self.summary)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", precision: str = "fp32") -> DiffusionPipeline:
        """Load a model directory (or a Hugging Face Hub repository id, downloaded once)."""
        directory = resolve_model_directory(path)
        config = read_json(directory / CONFIG_FILE, what="model config")
        tokenizer = load_tokenizer(directory)
        try:
            model_config = ModelConfig.from_dict(config["model"])
            process = build_process(config["process"], Vocabulary.of(tokenizer))
        except (KeyError, TypeError) as error:
            raise DDLMError(f"{directory / CONFIG_FILE} is incomplete ({error}); re-export the model") from None
        if model_config.vocab_size != tokenizer.vocab_size:
            raise DDLMError(
                f"model vocabulary ({model_config.vocab_size}) and tokenizer ({tokenizer.vocab_size}) disagree "
                f"in {directory}; the tokenizer files belong to another model"
            )
        model = Transformer(model_config)
        weights_path = directory / WEIGHTS_FILE
        if not weights_path.is_file():
            raise DDLMError(f"no {WEIGHTS_FILE} in {directory}; is it a finished ddlm model directory?")
        try:
            model.load_state_dict(load_file(str(weights_path)))
        except (SafetensorError, RuntimeError, OSError) as error:
            first = str(error).strip().splitlines()[0]
            raise DDLMError(f"{weights_path} is corrupt or does not match config.json ({first})") from None
        summary_path = directory / SUMMARY_FILE
        summary = read_json(summary_path, what="training summary") if summary_path.is_file() else {}
        return cls(model.to(resolve_device(device)), tokenizer, process, summary, precision)

    # ----- generation -----

    def build_canvas(
        self,
        prompt: str | list[str] | None,
        num_samples: int,
        length: int | None,
        infill: str | None = None,
        suffix: str | None = None,
    ) -> Canvas:
        """The canvas for ``num_samples`` samples of each prompt (or of the infill template)."""
        if num_samples < 1:
            raise DDLMError(f"num_samples must be at least 1, got {num_samples}")
        mask_id, pad_id = self.tokenizer.mask_id, self.tokenizer.pad_id
        if infill is not None:
            if prompt or suffix or length is not None:
                raise DDLMError("an infill template sets the whole canvas; drop the prompt, suffix and length")
            row = parse_template(infill, self.tokenizer.encode)
            self.check_fits(len(row), "the infill template")
            return Canvas.from_rows([row] * num_samples, mask_id, pad_id, self.device)
        prompts = [prompt] if prompt is None or isinstance(prompt, str) else list(prompt)
        encoded = [self.tokenizer.encode(text) if text else [] for text in prompts]
        suffix_ids = self.tokenizer.encode(suffix) if suffix else []
        longest = max(len(ids) for ids in encoded) + len(suffix_ids)
        length = self.check_length(longest, length)
        rows = [ids for ids in encoded for _ in range(num_samples)]
        return Canvas.from_prompts(rows, length, mask_id, pad_id, self.device, suffix=suffix_ids)

    def sample(
        self,
        prompt: str | list[str] | None = None,
        num_samples: int = 1,
        length: int | None = None,
        steps: int = 128,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        use_cache: bool = True,
        trace: bool = False,
        infill: str | None = None,
        suffix: str | None = None,
        **sampler_options: Any,
    ) -> SampleOutput:
        """Token-level sampling; the output's ``canvas`` says which positions were generated.

        ``prompt``: text the samples start with, or a list of them (``num_samples`` samples
        of each). ``infill``: a template such as ``"The [MASK*5] sat on the [MASK] mat"``
        instead of a prompt. ``suffix``: text fixed after the generated positions. Extra
        keyword arguments go to the process's sampler: for masked models ``policy``,
        ``block_length``, ``threshold``, ``remask``, ``remask_eta``, ``prefix_cache``,
        ``min_length`` (see ``ddlm.samplers.masked``); for SEDD ``method``.
        """
        canvas = self.build_canvas(prompt, num_samples, length, infill, suffix)
        options = SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p)
        with autocast(self.device, self.precision):
            output = run_sampler(
                self.model, self.process, canvas=canvas, steps=steps, options=options,
                seed=seed if seed is not None else torch.seed(), use_cache=use_cache, trace=trace, **sampler_options,
            )
        output.canvas = canvas
        return output

    def generate(self, prompt: str | list[str] | None = None, stop_at_eos: bool = True, **options: Any) -> list[str]:
        """Texts (prompt included) of the samples; options as in :meth:`sample`.

        With ``stop_at_eos`` a generated end-of-text token ends its stretch of generated
        text: it and the generated tokens after it (up to the next given token) are dropped.
        """
        output = self.sample(prompt, **options)
        return [self.decode(output, row, stop_at_eos) for row in range(output.tokens.shape[0])]

    def decode(self, output: SampleOutput, row: int, stop_at_eos: bool = True) -> str:
        """The text of sample ``row``: padding removed, cut at end-of-text as :meth:`generate` says."""
        canvas = output.canvas
        kept, skipping = [], False
        for token, generated, active in zip(
            output.tokens[row].tolist(), canvas.generated[row].tolist(), canvas.active[row].tolist()
        ):
            if not generated:
                skipping = False
            elif stop_at_eos and token == self.tokenizer.eos_id:
                skipping = True
            if active and not skipping:
                kept.append(token)
        return self.tokenizer.decode(kept)

    def check_fits(self, tokens: int, what: str) -> None:
        if tokens > self.context_length:
            raise DDLMError(
                f"{what} is {tokens} tokens but the model's context is {self.context_length}; shorten it"
            )

    def check_length(self, prompt_length: int, length: int | None) -> int:
        """The number of tokens to generate after ``prompt_length`` given ones, checked against the context."""
        room = self.context_length - prompt_length
        if room < 1:
            raise DDLMError(
                f"the prompt is {prompt_length} tokens but the model's context is {self.context_length}; "
                "shorten the prompt"
            )
        if length is None:
            return room
        if length < 1:
            raise DDLMError(f"length must be at least 1, got {length}")
        if length > room:
            raise DDLMError(
                f"prompt ({prompt_length}) + length ({length}) tokens exceed the model's context of "
                f"{self.context_length}; use --length {room} or less"
            )
        return length


def resolve_model_directory(path: str | Path) -> Path:
    """A local model directory, or a Hub repository id fetched with huggingface_hub."""
    directory = Path(path)
    if directory.is_dir():
        return directory
    text = str(path)
    if directory.exists() or text.count("/") != 1 or text.startswith((".", "/")):
        raise DDLMError(f"model directory {path} not found; pass the --out folder of a `ddlm train` run")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=text))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as error:
        raise DDLMError(f"model {path} is neither a local directory nor reachable on the Hub ({type(error).__name__})") from None


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise DDLMError(f"no {path.name} in {path.parent}; is it a ddlm model directory?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:
        raise DDLMError(f"{what} {path} is not valid JSON ({error}); re-export the model") from None
    if not isinstance(data, dict):
        raise DDLMError(f"{what} {path} must hold a JSON object; re-export the model")
    return data
