"""Fine-tuning (``ddlm finetune``): a trained model taught prompt/response examples.

The run keeps the source's tokenizer, process and backbone (a ddlm model directory, a bundled model
or a Hugging Face diffusion LM), and trains on the loss of its process's ``sft_loss``: the prompt is
never corrupted nor scored, the response and its end-of-text padding are (:mod:`ddlm.data.sft`).
Full fine-tuning by default; with ``lora_rank`` only LoRA adapters train (:mod:`ddlm.lora`), merged
into the exported weights or saved alone. Otherwise it is an ordinary run of the :class:`Trainer`:
checkpoints, exact ``--resume``, ``run.json`` and ``log.csv``, and at the end a model directory that
``ddlm sample``, ``ddlm eval`` and ``ddlm serve`` load.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from ddlm.bundled import bundled_model_path
from ddlm.data.sft import PLAIN_TEMPLATE, ChatFormat, SFTBatch, SFTLoader, SFTRow, load_rows, split_rows
from ddlm.device import autocast
from ddlm.errors import DDLMError
from ddlm.fileio import write_json_atomic
from ddlm.hf import HFDiffusionModel, end_ids, is_transformers_config
from ddlm.lora import add_lora, merged, save_adapter
from ddlm.model import Transformer
from ddlm.pipeline import CONFIG_FILE, SUMMARY_FILE, DiffusionPipeline, read_json, resolve_model_directory
from ddlm.processes import LossOutput
from ddlm.training.checkpoint import CHECKPOINT_FILE
from ddlm.training.config import RunConfig
from ddlm.training.init import (
    adapted_config,
    load_initial_weights,
    load_source,
    record_source,
    refuse_dropout,
    weights_fingerprint,
)
from ddlm.training.run import RUN_FILE, corpus_changes, locked, read_run_file, record_changes, resume_changes
from ddlm.training.trainer import VALIDATION_SEED, Trainer

LORA_SAVES = ("merged", "adapter")
# Fine-tuning's own defaults (before the user's overrides): a short run at a low learning rate.
DEFAULTS = ["optim.lr=1e-4", "optim.warmup_steps=20", "optim.max_steps=500", "optim.batch_size=16",
            "data.valid_fraction=0.05", "log.eval_every=100", "log.sample_every=0", "log.save_every=100"]
# What an override may change besides the optim, log and data sections: the source decides the rest.
KEPT_FROM_SOURCE = ("tokenizer.", "model.", "process.", "init.", "adapt.")
OVERRIDABLE = ("model.dropout",)
EVAL_BATCH_ROWS = 64


@dataclass
class FineTuneSettings:
    """How a model is fine-tuned besides the run configuration: LoRA, checkpointing, the chat format."""

    lora_rank: int = 0  # 0: full fine-tuning
    lora_alpha: float | None = None  # adapter scale alpha / rank; default 2 * rank
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None  # linear layers' names; default: the family's projections
    lora_save: str = "merged"  # merged: the exported weights include the adapters; adapter: the adapters alone
    gradient_checkpointing: bool = False
    chat_template: str = PLAIN_TEMPLATE  # messages rows for ddlm tokenizers (Hugging Face ones use their own)
    chat_roles: list[str] = field(default_factory=lambda: ["user", "assistant"])  # of a --chat prompt and its reply

    def __post_init__(self) -> None:
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise DDLMError(f"--lora-rank must be a whole number >= 0 (0: full fine-tuning), got {self.lora_rank!r}")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise DDLMError(f"--lora-alpha must be positive, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise DDLMError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_save not in LORA_SAVES:
            raise DDLMError(f"--lora-save must be one of {', '.join(LORA_SAVES)}, got {self.lora_save!r}")
        if not self.lora_rank and (self.lora_save == "adapter" or self.lora_targets):
            raise DDLMError("--lora-save adapter and --lora-targets need LoRA: add --lora-rank R")
        if len(self.chat_roles) != 2:
            raise DDLMError(f"--chat-roles takes two roles, USER,ASSISTANT; got {','.join(self.chat_roles)}")
        self.chat_format()  # checks the template

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank

    def chat_format(self) -> ChatFormat:
        return ChatFormat(self.chat_template, *self.chat_roles)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FineTuneSettings:
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def source_label(name: str) -> str:
    """How a run records its source: a bundled name as is, a directory as its absolute path."""
    return name if bundled_model_path(name) is not None or not Path(name).is_dir() else str(Path(name).resolve())


def finetune_config(source: DiffusionPipeline, source_name: str, overrides: list[str]) -> RunConfig:
    """The run configuration of a fine-tuning of ``source``: fine-tuning's defaults, the source's process,
    backbone and context length, then ``overrides`` (optim.*, log.*, data.*, and model.dropout for a ddlm backbone:
    a Hugging Face network keeps its own)."""
    refused = [item for item in overrides if item.startswith(KEPT_FROM_SOURCE) and not item.startswith(OVERRIDABLE)]
    if refused:
        raise DDLMError(f"fine-tuning keeps the source model's tokenizer, process and backbone: drop {refused[0]}")
    config = RunConfig().with_overrides(DEFAULTS)
    for key, value in source.process.to_dict().items():
        config.set(f"process.{key}", value)
    config.data.context_length = source.context_length
    native = isinstance(source.model, Transformer)
    if native:
        config.model.time_conditioning = source.model.config.time_conditioning
        config.model.dropout = source.model.config.dropout
    config = config.with_overrides(overrides)
    if config.data.context_length > source.context_length:
        raise DDLMError(f"data.context_length {config.data.context_length} exceeds the model's context of "
                        f"{source.context_length}; use {source.context_length} or less")
    if not native:
        refuse_dropout(config, f"--model {source_name}")
    config = adapted_config(config, source, source_name) if native else record_source(config, source, source_name)
    config.validate()
    return config


def end_of_text_id(source_name: str, tokenizer: Any) -> int:
    """The id that ends a response and pads a batch: a Hugging Face model's own ``eos_token_id`` (LLaDA pads
    with <|endoftext|>, not its end of turn), else the tokenizer's end-of-text."""
    config = read_json(resolve_model_directory(source_name) / CONFIG_FILE, what="model config")
    usable = [i for i in end_ids(config) if i not in (tokenizer.mask_id, tokenizer.pad_id)]
    return usable[0] if is_transformers_config(config) and usable else tokenizer.eos_id


def file_fingerprint(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def checkpoint_blocks(model: torch.nn.Module) -> None:
    """Gradient checkpointing: the transformer blocks recompute their activations in the backward pass."""
    if isinstance(model, HFDiffusionModel):
        if not getattr(model.network, "supports_gradient_checkpointing", False):
            raise DDLMError("this model's code does not support gradient checkpointing; drop --gradient-checkpointing")
        model.network.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return
    for block in model.blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained parameters (each shared one once): what a checkpoint keeps of the model."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def response_nelbo(model: torch.nn.Module, process: Any, batches: Iterable[SFTBatch], precision: str = "fp32") -> float:
    """NELBO per response token (nats) of ``batches`` under ``model``, with the noise of validation
    (seeded ``VALIDATION_SEED``): exact for the autoregressive process."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(VALIDATION_SEED)
    nelbo, tokens = 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        with autocast(device, precision):
            output = process.sft_loss(model, batch.tokens, batch.response, generator)
        nelbo += output.nelbo_sum
        tokens += output.num_tokens
    return nelbo / tokens


class FineTuneTrainer(Trainer):
    """The :class:`Trainer` on prompt/response rows, starting from ``source``'s weights (with LoRA adapters
    when ``settings.lora_rank``)."""

    def __init__(self, config: RunConfig, source: DiffusionPipeline, settings: FineTuneSettings,
                 train_rows: list[SFTRow], valid_rows: list[SFTRow], out_dir: str | Path, end_id: int,
                 device: str = "auto", show_progress: bool = True):
        self.source = source
        self.settings = settings
        self.end_id = end_id
        self.lora_config: Any = None
        self.truncated_rows = 0  # examples cut to the context (set by prepare_finetune)
        self.chat = False  # whether the examples include chat turns (set by prepare_finetune)
        self.sampler_defaults = dict(source.sampler_defaults)  # the fine-tuned model keeps the source's
        super().__init__(config, source.tokenizer, train_rows, valid_rows, out_dir, device, show_progress)
        self.source = None  # its weights are in the model now
        if settings.gradient_checkpointing:
            checkpoint_blocks(self.model)

    def new_model(self) -> torch.nn.Module:
        """The source's network (a ddlm backbone under the run's dropout, or a copy of a Hugging Face one),
        with LoRA adapters when asked for."""
        if isinstance(self.source.model, Transformer):
            model = super().new_model()
            load_initial_weights(model, self.source.model)
        else:
            model = copy.deepcopy(self.source.model)
        if self.settings.lora_rank:
            settings = self.settings
            self.lora_config = add_lora(model, settings.lora_rank, settings.alpha, settings.lora_dropout,
                                        settings.lora_targets)
        return model

    def new_loaders(self, train_rows: list[SFTRow], valid_rows: list[SFTRow]) -> tuple[SFTLoader, SFTLoader | None]:
        multiple = getattr(self.process, "block_size", 1)  # block diffusion: whole blocks
        optim = self.config.optim
        train = SFTLoader(train_rows, optim.batch_size, self.end_id, seed=optim.seed, multiple=multiple,
                          rank=self.dist.rank, world_size=self.dist.world_size)
        valid = SFTLoader(valid_rows, optim.batch_size, self.end_id, multiple=multiple) if valid_rows else None
        return train, valid

    def batch_loss(self) -> tuple[LossOutput, int]:
        """The SFT loss of the next micro-batch, and its examples' tokens (their padding left out)."""
        batch = next(self.train_loader).to(self.device)
        loss = self.process.sft_loss(self.trained_model, batch.tokens, batch.response, self.random.noise)
        return loss, int(batch.lengths.sum())

    @torch.no_grad()
    def evaluate(self, max_batches: int | None = None, draws: int = 1, progress: str | None = None) -> float:
        """Held-out NELBO per response token (nats) of the EMA weights, with fixed draws; rows are scored in
        batches of one length, so none is padded beyond its own end-of-text. ``max_batches`` (the periodic
        estimate) caps the rows at that many batches' worth, spread over the whole held-out file."""
        if self.valid_loader is None:
            raise DDLMError("no held-out examples; pass --valid FILE or set data.valid_fraction > 0")
        max_rows = None if max_batches is None else max_batches * EVAL_BATCH_ROWS
        batches = [self.valid_loader.iter_eval_batches(EVAL_BATCH_ROWS, max_rows) for _ in range(draws)]
        batches = tqdm(itertools.chain(*batches), desc=progress, disable=progress is None, leave=False)
        return response_nelbo(self.load_ema_into_eval_model(), self.process, batches, self.precision)

    def pipeline(self) -> DiffusionPipeline:
        model = self.load_ema_into_eval_model()
        return DiffusionPipeline(merged(model) if self.settings.lora_rank else model, self.tokenizer, self.process,
                                 summary=self.summary(), precision=self.precision,
                                 sampler_defaults=self.sampler_defaults)

    def summary(self) -> dict[str, Any]:
        """The run's summary, with the fine-tuning settings and, for ddlm tokenizers trained on chat turns, the
        chat format that ``ddlm sample --chat`` writes prompts in."""
        summary = {**super().summary(), "finetune": self.settings.to_dict(), "truncated_rows": self.truncated_rows,
                   "trainable_parameters": sum(p.numel() for p in trainable_state(self.model).values())}
        if self.chat and not hasattr(self.tokenizer, "hf"):
            summary["chat"] = self.settings.chat_format().to_dict()
        return summary

    def export(self, summary: dict[str, Any]) -> None:
        """The model directory (merged weights), or the adapters alone with their base named."""
        if self.settings.lora_save == "adapter":
            save_adapter(self.load_ema_into_eval_model(), self.lora_config, self.config.init.source, self.out_dir)
        else:
            super().export(summary)
        if self.settings.lora_save == "adapter" or not isinstance(self.model, Transformer):
            write_json_atomic(self.out_dir / SUMMARY_FILE, summary)  # (save_pretrained writes it for ddlm models)

    def model_state(self) -> dict[str, torch.Tensor]:
        """Of the model only the trained parameters (the rest is the source's)."""
        return trainable_state(self.model)

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        trained = set(trainable_state(self.model))
        loaded = self.model.load_state_dict(state, strict=False)
        misfits = sorted(loaded.unexpected_keys) or sorted(trained - set(state))
        if misfits:
            raise DDLMError(f"checkpoint {self.checkpoint_path} does not fit this fine-tuning ({misfits[0]}); "
                            "resume with the run's own LoRA settings")


def prepare_finetune(
    model: str | None,
    data: str | Path | None,
    out_dir: str | Path,
    valid: str | Path | None = None,
    overrides: list[str] | None = None,
    settings: FineTuneSettings | None = None,
    resume: bool = False,
    device: str = "auto",
    show_progress: bool = True,
    trust_remote_code: bool = False,
) -> FineTuneTrainer:
    """A :class:`FineTuneTrainer` for a new fine-tuning of ``model`` on the JSON-lines ``data`` in ``out_dir``
    (held out: ``valid``, else ``data.valid_fraction`` of ``data``), or the run saved there when ``resume``
    (which takes no model, data or settings: the run's own; ``overrides`` as ``--resume`` allows)."""
    with locked(out_dir) as lock:
        trainer = build_finetune(model, data, Path(out_dir), valid, overrides or [], settings, resume, device,
                                 show_progress, trust_remote_code)
        trainer.run_lock = lock
    return trainer


def build_finetune(model: str | None, data: str | Path | None, out_dir: Path, valid: str | Path | None,
                   overrides: list[str], settings: FineTuneSettings | None, resume: bool, device: str,
                   show_progress: bool, trust_remote_code: bool) -> FineTuneTrainer:
    """``prepare_finetune``'s work once the run directory is locked."""
    if resume:
        if model is not None or data is not None or valid is not None or settings is not None:
            raise DDLMError("--resume continues with the run's own model, data and settings; drop --model, --data, "
                            "--valid and the fine-tuning flags")
        run = read_run_file(out_dir)
        if "finetune" not in run:
            raise DDLMError(f"{out_dir} holds a training run, not a fine-tuning; continue it with `ddlm train --resume`")
        config = RunConfig.from_dict(run["run_config"]).with_overrides(overrides)
        changes = resume_changes(run["run_config"], config)
        model, data, valid = config.init.source, run["data"], run["valid"]
        settings = FineTuneSettings.from_dict(run["finetune"])
        source = load_source(model, hugging_face=True, trust_remote_code=trust_remote_code)
        if weights_fingerprint(model) != config.init.fingerprint:
            raise DDLMError(f"the weights of {model} changed since this fine-tuning started; restore them to resume")
    else:
        if model is None or data is None:
            raise DDLMError("a fine-tuning needs --model (the model to start from) and --data (a .jsonl file)")
        if (out_dir / CHECKPOINT_FILE).exists():
            raise DDLMError(f"{out_dir} already holds a run; add --resume to continue it or choose another --out")
        model, settings = source_label(str(model)), settings or FineTuneSettings()
        source = load_source(model, hugging_face=True, trust_remote_code=trust_remote_code)
        config = finetune_config(source, model, overrides)
    end_id = end_of_text_id(model, source.tokenizer)
    chat, length = settings.chat_format(), config.data.context_length
    train = load_rows(data, source.tokenizer, chat, end_id, length)
    rows, valid_rows, cut = train.rows, [], train.truncated
    if valid is not None:
        held_out = load_rows(valid, source.tokenizer, chat, end_id, length)
        valid_rows, cut = held_out.rows, cut + held_out.truncated
    elif config.data.valid_fraction > 0:
        rows, valid_rows = split_rows(rows, config.data.valid_fraction, seed=0)
    corpora = {"data": str(Path(data).resolve()), "valid": None if valid is None else str(Path(valid).resolve()),
               "fingerprints": {"data": file_fingerprint(data), "valid": None if valid is None else file_fingerprint(valid)}}
    trainer = FineTuneTrainer(config, source, settings, rows, valid_rows, out_dir, end_id, device, show_progress)
    trainer.truncated_rows, trainer.chat = cut, train.chat
    if resume:
        changes.update(corpus_changes(run, corpora, accept=False))
        trainer.resume()
        if trainer.dist.is_main:
            record_changes(out_dir, run, config, changes, corpora, trainer.state.step)
    elif trainer.dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        source.tokenizer.save(out_dir)
        write_json_atomic(out_dir / RUN_FILE, {**corpora, "finetune": settings.to_dict(), "run_config": config.to_dict()})
    return trainer


def finetune(model: str, data: str | Path, out_dir: str | Path, **keywords: Any) -> dict[str, Any]:
    """Fine-tune ``model`` on ``data`` into ``out_dir`` (keywords as :func:`prepare_finetune`); the run's summary."""
    return prepare_finetune(model, data, out_dir, **keywords).train()
