"""The run configuration's schema: one dataclass per section, and RunConfig holding them."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from ddlm.errors import DDLMError
from ddlm.model.config import ModelConfig
from ddlm.training.config.coercion import coerce, flatten, set_value, setting_type


@dataclass
class TokenizerSettings:
    kind: str = "char"  # char | byte | bpe | gpt2
    vocab_size: int | None = None  # for bpe
    gpt2_dir: str | None = None  # for gpt2: folder with vocab.json and merges.txt


@dataclass
class DataSettings:
    context_length: int = 256
    layout: str = "packed"  # packed | padded
    separator: str | None = None  # document separator in the text, e.g. "<|endoftext|>"
    valid_fraction: float = 0.1  # held out from the end when no validation file is given
    # Hugging Face data sets (--data hf:NAME or a save_to_disk folder):
    hf_config: str | None = None  # the data set's configuration (subset), e.g. wikitext-103-raw-v1
    hf_split: str = "train"  # the split trained on
    hf_valid_split: str = "validation"  # the split of --valid (train) or --data (eval) when it names a data set
    hf_field: str = "text"  # the column holding the text


# The model section is a ModelConfig; the trainer fills these keys of it (from the tokenizer, the
# data and the process), and ``model.time_conditioning`` decides only for masked diffusion (SEDD
# always sees the noise level, AR never).
FILLED_KEYS = {"model.vocab_size": "the tokenizer", "model.context_length": "data.context_length",
               "model.causal": "process.name", "model.start_id": "the tokenizer's end-of-text id"}


@dataclass
class ProcessSettings:
    name: str = "masked"  # a family registered in ddlm.families
    # {name: linear | cosine | polynomial | geometric, parameter: value, ...} (or just the name);
    # null: the process's own default (its from_config names it; docs/math.md lists them)
    schedule: dict[str, Any] | None = None
    eps: float = 1e-3
    antithetic: bool = True
    estimator: str = "time"  # masked process: time | count (same NELBO, lower variance)
    block_size: int = 4  # block process: tokens per block (must divide data.context_length)
    clip_min: float | None = None  # block process: training times drawn from [clip_min, clip_max] (clipped noise)
    clip_max: float | None = None


DEFAULT_MAX_STEPS = 5000


@dataclass
class OptimSettings:
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    warmup_fraction: float = 0.05  # under a time budget the warm-up also ends after this share of it
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    ema: float = 0.999
    max_steps: int | None = None  # default: DEFAULT_MAX_STEPS, or no cap when a time budget is set
    time_budget: float | None = None  # seconds (or "10m", "1.5h"); the LR schedule then follows elapsed time
    precision: str = "auto"  # auto (bf16 where the device has native bf16) | bf16 | fp32
    parallel: str = "ddp"  # under torchrun: ddp (a full copy per process) | fsdp (sharded, FSDP2)
    seed: int = 0

    def step_limit(self) -> int | None:
        """The last step: ``max_steps`` when set; otherwise none under a time budget (the time decides),
        else DEFAULT_MAX_STEPS. ``--max-steps``/``--time-budget`` and these keys are the same settings."""
        if self.max_steps is not None:
            return self.max_steps
        return None if self.time_budget is not None else DEFAULT_MAX_STEPS


@dataclass
class LogSettings:
    log_every: int = 10
    eval_every: int = 250
    eval_batches: int = 4  # batches of ~16k tokens each; the final evaluation uses all
    sample_every: int = 1000
    sample_steps: int = 64
    save_every: int = 500


@dataclass
class InitSettings:
    """Where a run's first weights came from (``ddlm train --init MODEL``); filled by the trainer."""

    source: str | None = None  # a model directory or bundled name
    source_process: str | None = None  # the process the source was trained with
    fingerprint: str | None = None  # SHA-256 (16 hex digits) of the source's weights


@dataclass
class AdaptSettings:
    """The attention path from an autoregressive model (``--init``) to a diffusion model, by steps, and the
    autoregressive loss kept beside the diffusion loss."""

    anneal_steps: int = 0  # masked: each position sees i + look-ahead keys, growing from causal to full (DiffuGPT)
    grow_steps: int = 0  # block: the block size doubles from 1 (autoregressive) to process.block_size (NBDiff)
    ar_loss_weight: float = 0.0  # shifted models: + weight x the clean batch's next-token NLL under causal attention


@dataclass
class RunConfig:
    """Everything a training run needs besides the data paths."""

    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelConfig = field(default_factory=ModelConfig)
    process: ProcessSettings = field(default_factory=ProcessSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    log: LogSettings = field(default_factory=LogSettings)
    init: InitSettings = field(default_factory=InitSettings)
    adapt: AdaptSettings = field(default_factory=AdaptSettings)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        for dotted_key in FILLED_KEYS:
            section, _, key = dotted_key.partition(".")
            del values[section][key]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        config = cls()
        for key, value in flatten(values).items():
            config.set(key, value)
        return config

    def set(self, dotted_key: str, value: Any) -> None:
        """Set ``section.key`` (or ``section.key.entry`` of a mapping), checking the key, the type and the range."""
        set_value(self, dotted_key, value, FILLED_KEYS)

    def with_overrides(self, overrides: list[str]) -> RunConfig:
        """A copy with ``section.key=value`` overrides applied (values parsed as YAML)."""
        config = copy.deepcopy(self)
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep:
                raise DDLMError(f"override {item!r} is not key=value; write e.g. optim.lr=3e-4")
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw  # e.g. a separator such as "- -": taken as written
            config.set(key.strip(), value)
        return config

    def validate(self) -> None:
        """Check every setting against its type and range (a one-line error naming the first bad key)."""
        for key, value in flatten(self.to_dict()).items():
            section, _, name = key.partition(".")
            coerce(key, setting_type(getattr(self, section), name), value)
        self.model.check()
