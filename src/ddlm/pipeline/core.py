"""DiffusionPipeline: model + tokenizer + process + sampler, saved as one model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ddlm.device import resolve_precision
from ddlm.lora import is_adapter_directory, load_adapted
from ddlm.model import Transformer
from ddlm.pipeline.files import (
    check_sampler_defaults,
    read_model_directory,
    read_sampler_defaults,
    refuse_pickled_weights,
    resolve_model_directory,
    write_model_directory,
    write_sampler_defaults,
)
from ddlm.pipeline.streaming import Streaming
from ddlm.processes import Process
from ddlm.samplers import SamplerOptions
from ddlm.tokenizers import Tokenizer


class DiffusionPipeline(Streaming):
    """Generate text with a trained model: ``DiffusionPipeline.from_pretrained(dir).generate()``.

    ``sampler_defaults``: the sampler options this model is best sampled with (e.g. ``{"policy":
    "confidence"}``), saved in its directory's ``sampler_config.json``; they replace the declared
    defaults of :class:`SamplerOptions` wherever the caller does not set an option (keywords of
    :meth:`stream`, flags of ``ddlm sample``, fields of an API request, controls of the web page).
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        process: Process,
        summary: dict[str, Any] | None = None,
        precision: str = "auto",
        compile_model: bool = False,
        sampler_defaults: dict[str, Any] | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.process = process
        self.summary = summary or {}
        self.sampler_defaults = dict(sampler_defaults or {})
        check_sampler_defaults(self.sampler_defaults, process.name)
        self.precision = resolve_precision(precision, self.device)
        # what the samplers call: the model itself, or through torch.compile (compiled on the first call)
        self.sampling_model = torch.compile(self.model) if compile_model else self.model

    def __repr__(self) -> str:
        config = self.model.config
        schedule = getattr(self.process, "schedule", None)
        return (
            f"DiffusionPipeline(process={self.process.name!r}"
            + (f", schedule={type(schedule).__name__}" if schedule is not None else "")
            + f", parameters={self.model.num_parameters():,}, layers={config.n_layers}, d_model={config.d_model}"
            f", context_length={config.context_length}, tokenizer={self.tokenizer!r}"
            f", device={self.device.type!r}, precision={self.precision!r})"
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    # ----- saving and loading -----

    def save_pretrained(self, directory: str | Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Write the model directory; ``weights`` (e.g. the EMA) replace the model's own.

        A Hugging Face model (:mod:`ddlm.hf`) is written in its own ``transformers`` format.
        """
        write_model_directory(Path(directory), self.model, self.tokenizer, self.process, self.summary, weights)
        check_sampler_defaults(self.sampler_defaults, self.process.name)  # (they may have been changed since)
        write_sampler_defaults(Path(directory), self.sampler_defaults)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", precision: str = "auto",
                        trust_remote_code: bool = False, compile_model: bool = False) -> DiffusionPipeline:
        """Load a model directory (or a Hugging Face Hub repository id, downloaded once).

        ``precision``: auto (bf16 where the hardware multiplies bf16 natively), fp32 or bf16.
        ``compile_model``: sample through ``torch.compile`` (a minute to compile, then faster).

        A ``transformers`` model (BERT family, LLaDA, Dream: a config.json ddlm did not write) is
        loaded through :mod:`ddlm.hf`; model code shipped with it runs only with ``trust_remote_code``.
        """
        directory = resolve_model_directory(path)
        refuse_pickled_weights(directory)
        if is_adapter_directory(directory):  # LoRA adapters alone (ddlm finetune --lora-save adapter)
            pipe = load_adapted(directory, device=device, precision=precision, trust_remote_code=trust_remote_code,
                                compile_model=compile_model)
        else:
            pipe = cls(*read_model_directory(directory, device, precision, trust_remote_code), precision, compile_model)
        pipe.sampler_defaults = {**pipe.sampler_defaults, **read_sampler_defaults(directory, pipe.process.name)}
        return pipe

    def sampler_options(self, **changes: Any) -> SamplerOptions:
        """The options to sample this model with: its sampler defaults, with ``changes`` replacing fields."""
        return SamplerOptions.build(**{**self.sampler_defaults, **changes})
