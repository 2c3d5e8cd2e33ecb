"""Masking schedules alpha(t): the probability that a token is still visible at time t.

Each schedule gives alpha(t) (decreasing, alpha(0) = 1, alpha(1) = 0) and the NELBO
weight w(t) = -alpha'(t) / (1 - alpha(t)) of ../shared/MATH.md.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import torch

from ddlm.errors import DDLMError


class Schedule(ABC):
    """Base class: subclasses define ``alpha`` and ``weight`` on tensors of times in [0, 1]."""

    name: str

    @abstractmethod
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Probability that a token is still visible at time t."""

    @abstractmethod
    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """NELBO weight -alpha'(t) / (1 - alpha(t))."""

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}


@dataclass
class LinearSchedule(Schedule):
    """alpha = 1 - t (MDLM's log-linear schedule; LLaDA's 1/t weighting)."""

    name = "linear"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1 - t

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

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1 - t**self.exponent

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        return self.exponent / t


@dataclass
class GeometricSchedule(Schedule):
    """sigma(t) = smin^(1-t) smax^t and alpha = exp(-sigma)."""

    sigma_min: float = 1e-4
    sigma_max: float = 20.0
    name = "geometric"

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min ** (1 - t) * self.sigma_max**t

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.sigma(t))

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        sigma = self.sigma(t)
        return sigma * math.log(self.sigma_max / self.sigma_min) / torch.expm1(sigma)


SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls for cls in (LinearSchedule, CosineSchedule, PolynomialSchedule, GeometricSchedule)
}


def build_schedule(name: str, **params: float) -> Schedule:
    """The schedule called ``name`` with optional parameters (exponent, sigma_min, sigma_max)."""
    if name not in SCHEDULES:
        raise DDLMError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    try:
        return SCHEDULES[name](**params)
    except TypeError as error:
        raise DDLMError(f"bad parameters {params} for schedule {name!r}: {error}") from None
