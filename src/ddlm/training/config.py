"""Run configuration: presets, YAML files and ``key=value`` overrides."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ddlm.errors import DDLMError


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


@dataclass
class ModelSettings:
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_hidden: int | None = None
    dropout: float = 0.0
    time_conditioning: bool = False  # masked diffusion only: SEDD always sees the noise level, AR never
    cond_dim: int | None = None  # noise-embedding width feeding adaLN (default d_model)


@dataclass
class ProcessSettings:
    name: str = "masked"  # see ddlm.processes.PROCESS_BUILDERS
    schedule: str = "linear"  # linear | cosine | polynomial | geometric
    eps: float = 1e-3
    antithetic: bool = True
    estimator: str = "time"  # masked process: time | count (same NELBO, lower variance)
    block_size: int = 4  # block process: tokens per block (must divide data.context_length)
    clip_min: float | None = None  # block process: training times drawn from [clip_min, clip_max] (clipped noise)
    clip_max: float | None = None


@dataclass
class OptimSettings:
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    ema: float = 0.999
    max_steps: int = 5000
    time_budget: float | None = None  # seconds; the LR schedule then follows elapsed time
    precision: str = "auto"  # auto (bf16 where the device has native bf16) | bf16 | fp32
    seed: int = 0


@dataclass
class LogSettings:
    log_every: int = 10
    eval_every: int = 250
    eval_batches: int = 4  # batches of ~16k tokens each; the final evaluation uses all
    sample_every: int = 1000
    sample_steps: int = 64
    save_every: int = 500


@dataclass
class RunConfig:
    """Everything a training run needs besides the data paths."""

    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    process: ProcessSettings = field(default_factory=ProcessSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    log: LogSettings = field(default_factory=LogSettings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        config = cls()
        for key, value in flatten(values).items():
            set_value(config, key, value)
        return config

    def with_overrides(self, overrides: list[str]) -> RunConfig:
        """A copy with ``section.key=value`` overrides applied (values parsed as YAML)."""
        config = copy.deepcopy(self)
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep:
                raise DDLMError(f"override {item!r} is not key=value; write e.g. optim.lr=3e-4")
            set_value(config, key.strip(), yaml.safe_load(raw))
        return config


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def set_value(config: RunConfig, dotted_key: str, value: Any) -> None:
    """Set ``section.key`` on ``config``, checking that the key exists and the type fits."""
    section_name, _, key = dotted_key.partition(".")
    section = getattr(config, section_name, None)
    if not is_dataclass(section) or not key:
        valid = [f.name for f in fields(config)]
        raise DDLMError(f"unknown config key {dotted_key!r}; keys look like section.key with section in {valid}")
    names = {f.name: f for f in fields(section)}
    if key not in names:
        raise DDLMError(f"unknown config key {dotted_key!r}; {section_name} has {sorted(names)}")
    setattr(section, key, coerce(dotted_key, getattr(section, key), value))


def coerce(dotted_key: str, current: Any, value: Any) -> Any:
    """``value`` converted to the type of the current setting, or a clear error."""
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise DDLMError(f"{dotted_key} must be true or false, got {value!r}")
        return value
    if isinstance(current, (int, float)) and value is not None:
        try:
            number = float(value)  # YAML reads 1e-3 as a string
        except (TypeError, ValueError):
            raise DDLMError(f"{dotted_key} must be a number, got {value!r}") from None
        if isinstance(current, int) and not number.is_integer():
            raise DDLMError(f"{dotted_key} must be a whole number, got {value!r}")
        return int(number) if isinstance(current, int) else number
    return value


def preset_names() -> list[str]:
    return sorted(p.stem for p in resources.files("ddlm.presets").iterdir() if p.name.endswith(".yaml"))


def load_config(preset: str | None = None, config_file: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then a preset or a YAML file, then overrides."""
    if preset and config_file:
        raise DDLMError("give either --preset or --config, not both")
    values: dict[str, Any] = {}
    if preset:
        if preset not in preset_names():
            raise DDLMError(f"unknown preset {preset!r}; choose one of {preset_names()}")
        values = yaml.safe_load(resources.files("ddlm.presets").joinpath(f"{preset}.yaml").read_text())
    elif config_file:
        path = Path(config_file)
        if not path.is_file():
            raise DDLMError(f"config file {path} not found; pass the path of a YAML file")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise DDLMError(f"config file {path} is not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise DDLMError(f"config file {path} must hold a mapping of sections (tokenizer, data, model, ...)")
    return RunConfig.from_dict(values).with_overrides(overrides or [])
