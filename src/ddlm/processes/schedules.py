"""Noise schedules on t in [0, 1], shared by masked diffusion and score entropy.

One schedule, two views of it (docs/math.md):
- masked diffusion reads alpha(t), the probability that a token is still clean at time t
  (decreasing, alpha(0) = 1), and the NELBO weight w(t) = -alpha'(t) / (1 - alpha(t));
- score entropy reads the total noise sigma_bar(t) = -log alpha(t) and its rate
  sigma(t) = d sigma_bar / dt = w(t) expm1(sigma_bar(t)).
Each schedule writes the view it has a closed form for; the base class derives the other.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from ddlm.errors import DDLMError


class Schedule(ABC):
    """Base class: subclasses define ``alpha`` and ``weight`` on tensors of times in [0, 1]."""

    name: str

    @abstractmethod
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Probability that a token is still clean at time t."""

    @abstractmethod
    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """NELBO weight -alpha'(t) / (1 - alpha(t))."""

    def total(self, t: torch.Tensor) -> torch.Tensor:
        """Total noise sigma_bar(t) = -log alpha(t)."""
        return -torch.log(self.alpha(t))

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        """Noise rate sigma(t) = d sigma_bar / dt = w(t) expm1(sigma_bar(t))."""
        return self.weight(t) * torch.expm1(self.total(t))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


@dataclass
class LinearSchedule(Schedule):
    """alpha = 1 - (1 - eps) t, so w = 1/t: MDLM's log-linear schedule and LLaDA's 1/t weighting
    (eps = 0); with eps > 0 it is SEDD's log-linear noise sigma_bar = -log(1 - (1 - eps) t),
    finite at t = 1."""

    eps: float = 0.0
    name = "linear"

    def __post_init__(self) -> None:
        if not 0 <= self.eps < 1:
            raise DDLMError(f"schedule eps must be in [0, 1), got {self.eps:g}")

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1 - (1 - self.eps) * t

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        return 1 / t


@dataclass
class CosineSchedule(Schedule):
    """alpha = 1 - cos(pi/2 (1 - t)) (MD4's cosine schedule)."""

    name = "cosine"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1 - torch.cos(math.pi / 2 * (1 - t))

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        return math.pi / 2 * torch.tan(math.pi / 2 * (1 - t))


@dataclass
class PolynomialSchedule(Schedule):
    """alpha = 1 - t^k."""

    exponent: float = 2.0
    name = "polynomial"

    def __post_init__(self) -> None:
        if not self.exponent > 0:
            raise DDLMError(f"schedule exponent must be positive, got {self.exponent:g}")

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1 - t**self.exponent

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        return self.exponent / t


@dataclass
class GeometricSchedule(Schedule):
    """sigma_bar = smin^(1-t) smax^t and alpha = exp(-sigma_bar) (SEDD's geometric noise)."""

    sigma_min: float = 1e-4
    sigma_max: float = 20.0
    name = "geometric"

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise DDLMError(f"schedule needs 0 < sigma_min < sigma_max, got {self.sigma_min:g} and {self.sigma_max:g}")

    def total(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min ** (1 - t) * self.sigma_max**t

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.total(t))

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        total = self.total(t)
        return total * math.log(self.sigma_max / self.sigma_min) / torch.expm1(total)


SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls for cls in (LinearSchedule, CosineSchedule, PolynomialSchedule, GeometricSchedule)
}


def build_schedule(name: str, **parameters: Any) -> Schedule:
    """The schedule called ``name`` with optional parameters (eps, exponent, sigma_min, sigma_max)."""
    if name not in SCHEDULES:
        raise DDLMError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    cls = SCHEDULES[name]
    known = sorted(field.name for field in fields(cls))
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise DDLMError(f"schedule {name!r} has no parameter {unknown[0]!r}; its parameters are {known or 'none'}")
    return cls(**{key: as_number(key, value) for key, value in parameters.items()})


def as_number(key: str, value: Any) -> float:
    """A finite float from a number or its text (YAML reads 1e-4 as text)."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise DDLMError(f"schedule {key} must be a number, got {value!r}")
    return number


def schedule_from_config(
    config: str | Mapping[str, Any] | None, default: str, defaults: Mapping[str, Mapping[str, float]] | None = None
) -> Schedule:
    """The schedule a process configuration asks for.

    ``config`` is a mapping ``{name, parameter: value, ...}`` (as ``Schedule.to_dict`` writes
    it), a bare name, or None. Without a name it is the process's ``default`` schedule;
    parameters left out take the process's ``defaults`` for that schedule, then the schedule's own.
    """
    if config is None:
        config = {}
    elif isinstance(config, str):
        config = {"name": config}
    elif not isinstance(config, Mapping):
        raise DDLMError(f"a schedule is a name or {{name: ..., parameter: value}}, got {config!r}")
    parameters = dict(config)
    name = parameters.pop("name", None) or default
    return build_schedule(name, **{**(defaults or {}).get(name, {}), **parameters})
