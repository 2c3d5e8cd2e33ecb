"""The backbone's hyper-parameters."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any

from ddlm.errors import DDLMError

# The smallest value of each whole-number setting (float settings: dropout in [0, 1), the others positive).
MINIMUMS = {"vocab_size": 1, "context_length": 1, "d_model": 1, "n_layers": 1, "n_heads": 1, "mlp_hidden": 1,
            "cond_dim": 1, "start_id": 0}
TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a number"}


@dataclass
class ModelConfig:
    """Shape of the transformer backbone.

    ``time_conditioning`` adds adaLN modulation by a noise level (SEDD needs it; masked
    diffusion does not, and without it samplers may cache predictions). ``causal``
    turns the bidirectional encoder into a decoder for the autoregressive baseline.
    A run configuration's ``model`` section is one of these with ``vocab_size``,
    ``context_length`` and ``causal`` left to the trainer, which takes them from the
    tokenizer, the data and the process.

    ``shift``: position i reads token i - 1 (``start_id`` at position 0), so the logits at
    position i - 1's token predict token i, as in an autoregressive model. A model adapted from
    an autoregressive one keeps its next-token head this way (DiffuGPT, Dream).
    """

    vocab_size: int | None = None  # required to build a model
    context_length: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_hidden: int | None = None  # SwiGLU width; default ~8/3 d_model rounded up to 64
    dropout: float = 0.0
    time_conditioning: bool = False
    cond_dim: int | None = None  # width of the noise embedding feeding adaLN; default d_model
    causal: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    shift: bool = False
    start_id: int | None = None  # the token a shifted model reads at position 0 (the AR model's start token)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise a DDLMError naming the first setting of the wrong type or out of range, or heads that do not fit the width."""
        hints = typing.get_type_hints(ModelConfig)
        for item in fields(self):
            check_setting(item.name, hints[item.name], getattr(self, item.name))
        if self.d_model % self.n_heads:
            raise DDLMError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "choose n_heads that divides d_model"
            )
        if (self.d_model // self.n_heads) % 2:
            raise DDLMError("the head size d_model/n_heads must be even for rotary positions")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def mlp_width(self) -> int:
        """The SwiGLU hidden width: ``mlp_hidden``, or about 8/3 d_model rounded up to a multiple of 64."""
        return self.mlp_hidden or 64 * -(-(8 * self.d_model // 3) // 64)

    @property
    def cond_width(self) -> int:
        """The width of the noise embedding feeding adaLN: ``cond_dim``, or d_model."""
        return self.cond_dim or self.d_model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DDLMError(f"unknown model config keys {unknown}; valid keys are {sorted(known)}")
        return cls(**values)


def check_setting(name: str, hint: Any, value: Any) -> None:
    """A one-line error unless ``value`` has the declared type of setting ``name`` and lies in its range."""
    nullable = isinstance(hint, types.UnionType)
    kind = next(arg for arg in typing.get_args(hint) if arg is not type(None)) if nullable else hint
    if value is None and nullable:
        return
    fits = isinstance(value, kind) or (kind is float and isinstance(value, int))
    if not fits or (kind is not bool and isinstance(value, bool)):
        raise DDLMError(f"model.{name} must be {TYPE_NAMES[kind]}{' or null' if nullable else ''}, got {value!r} "
                        f"({type(value).__name__}); correct it in the model's config")
    if kind is int and value < MINIMUMS[name]:
        raise DDLMError(f"model.{name} must be at least {MINIMUMS[name]}, got {value}; correct it in the model's config")
    if kind is float:
        in_range = 0 <= value < 1 if name == "dropout" else value > 0
        if not (math.isfinite(value) and in_range):
            allowed = "in [0, 1)" if name == "dropout" else "a positive finite number"
            raise DDLMError(f"model.{name} must be {allowed}, got {value}; correct it in the model's config")
