"""Run configuration: presets, YAML files and ``key=value`` overrides."""

from __future__ import annotations

import copy
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ddlm.errors import DDLMError
from ddlm.model.config import ModelConfig


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
FILLED_MODEL_KEYS = {"vocab_size": "the tokenizer", "context_length": "data.context_length", "causal": "process.name",
                     "start_id": "the tokenizer's end-of-text id"}


@dataclass
class ProcessSettings:
    name: str = "masked"  # see ddlm.processes.PROCESS_BUILDERS
    # {name: linear | cosine | polynomial | geometric, parameter: value, ...} (or just the name);
    # null: the process's default (masked: linear; sedd-absorb: log-linear; sedd-uniform: geometric)
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

    def step_limit(self) -> int | None:
        """The last step: ``max_steps`` when set; otherwise none under a time budget (the time decides),
        else DEFAULT_MAX_STEPS. ``--max-steps``/``--time-budget`` and these keys are the same settings."""
        if self.max_steps is not None:
            return self.max_steps
        return None if self.time_budget is not None else DEFAULT_MAX_STEPS
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
class InitSettings:
    """Where a run's first weights came from (``ddlm train --init MODEL``); filled by the trainer."""

    source: str | None = None  # a model directory or bundled name
    source_process: str | None = None  # the process the source was trained with
    fingerprint: str | None = None  # SHA-256 (16 hex digits) of the source's weights


@dataclass
class AdaptSettings:
    """The attention path from an autoregressive model (``--init``) to a diffusion model, by steps."""

    anneal_steps: int = 0  # masked: each position sees i + look-ahead keys, growing from causal to full (DiffuGPT)
    grow_steps: int = 0  # block: the block size doubles from 1 (autoregressive) to process.block_size (NBDiff)


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
        for key in FILLED_MODEL_KEYS:
            del values["model"][key]
        return values

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
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw  # e.g. a separator such as "- -": taken as written
            set_value(config, key.strip(), value)
        return config

    def validate(self) -> None:
        """Check every setting against its type and range (a one-line error naming the first bad key)."""
        for key, value in flatten(self.to_dict()).items():
            section, _, name = key.partition(".")
            coerce(key, setting_type(getattr(self, section), name), value)
        self.model.check()


def flatten(values: dict[str, Any]) -> dict[str, Any]:
    """{"a": {"b": 1, "c": {"d": 2}}} -> {"a.b": 1, "a.c": {"d": 2}}: sections to ``section.key``
    (a mapping setting such as process.schedule stays whole)."""
    flat: dict[str, Any] = {}
    for section, entries in values.items():
        if not isinstance(entries, dict):
            raise DDLMError(f"config section {section!r} must be a mapping of keys, got {entries!r}")
        flat.update({f"{section}.{key}": value for key, value in entries.items()})
    return flat


def set_value(config: RunConfig, dotted_key: str, value: Any) -> None:
    """Set ``section.key`` (or one entry, ``section.key.entry``, of a mapping setting) on ``config``,
    checking that the key exists and the type and range fit."""
    section_name, _, key = dotted_key.partition(".")
    key, _, entry = key.partition(".")
    section = getattr(config, section_name, None)
    if not is_dataclass(section) or not key:
        valid = [f.name for f in fields(config)]
        raise DDLMError(f"unknown config key {dotted_key!r}; keys look like section.key with section in {valid}")
    if section_name == "model" and key in FILLED_MODEL_KEYS:
        raise DDLMError(f"model.{key} is taken from {FILLED_MODEL_KEYS[key]}; leave it out of the model section")
    names = [f.name for f in fields(section) if section_name != "model" or f.name not in FILLED_MODEL_KEYS]
    if key not in names:
        raise DDLMError(f"unknown config key {dotted_key!r}; {section_name} has {sorted(names)}")
    declared = setting_type(section, key)
    if entry:
        if not is_mapping(declared[0]):
            raise DDLMError(f"{section_name}.{key} is not a mapping; write {section_name}.{key}=VALUE")
        value = {**(getattr(section, key) or {}), entry: value}
    setattr(section, key, coerce(f"{section_name}.{key}", declared, value))


def is_mapping(kind: Any) -> bool:
    return kind is dict or typing.get_origin(kind) is dict


def setting_type(section: Any, key: str) -> tuple[type, bool]:
    """The declared type of ``section.key`` and whether it may be null (``int | None``)."""
    declared = typing.get_type_hints(type(section))[key]
    if isinstance(declared, types.UnionType) or typing.get_origin(declared) is typing.Union:
        (base,) = [arg for arg in typing.get_args(declared) if arg is not type(None)]
        return base, True
    return declared, False


@dataclass(frozen=True)
class Bounds:
    """The range of a numeric setting: ``low``/``high`` included unless marked open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.high is None:
            return f"{'greater than' if self.low_open else 'at least'} {self.low}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


AT_LEAST_ONE = Bounds(1)
NOT_NEGATIVE = Bounds(0)
POSITIVE = Bounds(0, low_open=True)
FRACTION = Bounds(0, 1)
BELOW_ONE = Bounds(0, 1, high_open=True)

# Every numeric setting's range, in one place (a test checks that none is missing).
BOUNDS: dict[str, Bounds] = {
    "tokenizer.vocab_size": AT_LEAST_ONE,
    "data.context_length": AT_LEAST_ONE,
    "data.valid_fraction": BELOW_ONE,
    "model.d_model": AT_LEAST_ONE,
    "model.n_layers": AT_LEAST_ONE,
    "model.n_heads": AT_LEAST_ONE,
    "model.mlp_hidden": AT_LEAST_ONE,
    "model.dropout": BELOW_ONE,
    "model.cond_dim": AT_LEAST_ONE,
    "model.rope_theta": POSITIVE,
    "model.norm_eps": POSITIVE,
    "process.eps": Bounds(0, 1, low_open=True, high_open=True),
    "process.block_size": AT_LEAST_ONE,
    "process.clip_min": Bounds(0, 1, low_open=True),
    "process.clip_max": Bounds(0, 1, low_open=True),
    "optim.batch_size": AT_LEAST_ONE,
    "optim.grad_accum": AT_LEAST_ONE,
    "optim.lr": POSITIVE,
    "optim.min_lr_ratio": FRACTION,
    "optim.warmup_steps": NOT_NEGATIVE,
    "optim.warmup_fraction": FRACTION,
    "optim.weight_decay": NOT_NEGATIVE,
    "optim.beta1": BELOW_ONE,
    "optim.beta2": BELOW_ONE,
    "optim.grad_clip": NOT_NEGATIVE,
    "optim.ema": BELOW_ONE,
    "optim.max_steps": AT_LEAST_ONE,
    "optim.time_budget": POSITIVE,
    "optim.seed": Bounds(0, 2**31 - 1),
    "log.log_every": AT_LEAST_ONE,
    "log.eval_every": NOT_NEGATIVE,
    "log.eval_batches": AT_LEAST_ONE,
    "log.sample_every": NOT_NEGATIVE,
    "log.sample_steps": AT_LEAST_ONE,
    "log.save_every": NOT_NEGATIVE,
    "adapt.anneal_steps": NOT_NEGATIVE,
    "adapt.grow_steps": NOT_NEGATIVE,
}
DURATION_KEYS = {"optim.time_budget"}


def coerce(dotted_key: str, declared: tuple[type, bool], value: Any) -> Any:
    """``value`` converted to the declared type of the setting and checked against its range, or a clear error."""
    kind, nullable = declared
    if value is None:
        if nullable:
            return None
        raise DDLMError(f"{dotted_key} must be set (got null)")
    if kind is bool:
        if not isinstance(value, bool):
            raise DDLMError(f"{dotted_key} must be true or false, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise DDLMError(f"{dotted_key} must be text, got {value!r}")
        return value
    if is_mapping(kind):  # a mapping setting with a name, such as process.schedule: the bare name will do
        if isinstance(value, str):
            return {"name": value}
        if not isinstance(value, dict) or not all(isinstance(entry, str) for entry in value):
            raise DDLMError(f"{dotted_key} must be a name or a mapping {{name: ..., key: value}}, got {value!r}")
        return dict(value)
    number = to_number(dotted_key, kind, value)
    bounds = BOUNDS.get(dotted_key)
    if bounds is not None and not bounds.contains(number):
        raise DDLMError(f"{dotted_key} must be {bounds.describe()}, got {value!r}")
    return number


def to_number(dotted_key: str, kind: type, value: Any) -> int | float:
    """An int or finite float from a number or its text ("1e-3", and durations such as "10m" where allowed)."""
    if isinstance(value, str) and dotted_key in DURATION_KEYS:
        value = duration_seconds(value, dotted_key)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DDLMError(f"{dotted_key} must be a number, got {value!r}")
    if kind is int and isinstance(value, int):
        return value
    try:
        number = float(value)  # YAML reads 1e-3 as a string
    except ValueError:
        raise DDLMError(f"{dotted_key} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise DDLMError(f"{dotted_key} must be a finite number, got {value!r}")
    if kind is int:
        if not number.is_integer():
            raise DDLMError(f"{dotted_key} must be a whole number, got {value!r}")
        return int(number)
    return number


DURATION = re.compile(r"\s*(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*([smh]?)\s*")  # a plain number may use an exponent


def duration_seconds(text: str, what: str = "duration") -> float:
    """Seconds in '600', '90s', '10m', '1.5h'."""
    match = DURATION.fullmatch(text)
    if not match:
        raise DDLMError(f"invalid {what} {text!r}; write e.g. 600, 90s, 10m or 1.5h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def preset_names() -> list[str]:
    return sorted(p.stem for p in resources.files("ddlm.presets").iterdir() if p.name.endswith(".yaml"))


def preset_descriptions() -> dict[str, str]:
    """Each preset's name and the first line of its leading comment."""
    descriptions = {}
    for name in preset_names():
        first = resources.files("ddlm.presets").joinpath(f"{name}.yaml").read_text().splitlines()[0]
        descriptions[name] = first.lstrip("# ").strip() if first.startswith("#") else ""
    return descriptions


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
    config = RunConfig.from_dict(values).with_overrides(overrides or [])
    config.validate()
    return config
