"""Masking schedules alpha(t) for masked diffusion (MDLM, Sahoo et al. 2024, arXiv 2406.07524, Sec. 3).

Notation follows the paper: ``alpha(t)`` is the probability that a token is still clean at time
``t in [0, 1]``; a token is masked with probability ``1 - alpha(t)``. ``alpha(0) = 1`` (nothing masked) and
``alpha(1) = 0`` (everything masked). The continuous-time negative ELBO (MDLM Eq. 10) is

    L = E_t E_{x_t} [ -alpha'(t) / (1 - alpha(t)) * sum_{l masked} -log p_theta(x^l | x_t) ],

so each schedule also exposes that weight as :meth:`MaskingSchedule.weight`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import partial
from collections.abc import Callable

import torch


class MaskingSchedule(ABC):
    """Base class: a schedule is ``alpha(t)`` and its derivative; the ELBO weight follows from them."""

    name: str = "base"

    @abstractmethod
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Probability that a token is still clean at time ``t``."""

    @abstractmethod
    def alpha_prime(self, t: torch.Tensor) -> torch.Tensor:
        """Derivative ``d alpha / dt``."""

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """ELBO weight ``-alpha'(t) / (1 - alpha(t))`` (``1/t`` for the linear schedule)."""
        return -self.alpha_prime(t) / (1.0 - self.alpha(t))

    def mask_probability(self, t: torch.Tensor) -> torch.Tensor:
        """Probability ``1 - alpha(t)`` that a token is masked at time ``t``."""
        return 1.0 - self.alpha(t)


@dataclass(frozen=True)
class PolynomialSchedule(MaskingSchedule):
    """``alpha(t) = 1 - t**power``; ``alpha'(t) = -power * t**(power - 1)``; weight ``power / t``.

    ``power=1`` is the linear schedule of MDLM/LLaDA; ``power=0.5`` the square-root schedule (masks more
    tokens early), ``power=2`` the square schedule (masks fewer).
    """

    power: float = 1.0
    name: str = "polynomial"

    def __post_init__(self) -> None:
        if self.power <= 0:
            raise ValueError(f"PolynomialSchedule needs power > 0, got {self.power}")

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - t**self.power

    def alpha_prime(self, t: torch.Tensor) -> torch.Tensor:
        return -self.power * t ** (self.power - 1.0)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        # Closed form of -alpha'/(1 - alpha) = p t^(p-1) / t^p: exact and cheaper than the ratio.
        return self.power / t


@dataclass(frozen=True)
class LinearSchedule(PolynomialSchedule):
    """``alpha(t) = 1 - t``; ``alpha'(t) = -1``; ELBO weight ``1/t`` (MDLM, LLaDA)."""

    power: float = 1.0
    name: str = "linear"


@dataclass(frozen=True)
class CosineSchedule(MaskingSchedule):
    """``alpha(t) = cos(pi t / 2)``; ``alpha'(t) = -(pi/2) sin(pi t / 2)``.

    The weight is ``(pi/2) sin(pi t/2) / (1 - cos(pi t/2)) = (pi/2) / tan(pi t/4)``, which behaves like
    ``2/t`` near ``t = 0`` (MaskGIT-style cosine masking).
    """

    name: str = "cosine"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cos(0.5 * math.pi * t)

    def alpha_prime(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        # 1 - cos(x) = 2 sin^2(x/2) and sin(x) = 2 sin(x/2) cos(x/2): stable near t = 0.
        return 0.5 * math.pi / torch.tan(0.25 * math.pi * t)


@dataclass(frozen=True)
class ScheduleSpec:
    """One named schedule: ``alpha(t)`` as text (for help messages), its builder, and whether it takes a power."""

    formula: str
    build: Callable[..., MaskingSchedule]
    takes_power: bool = False


# The one list of schedule names: make_schedule, its error message and MDLMConfig.schedule's choices and help
# all read it.
SCHEDULES: dict[str, ScheduleSpec] = {
    "linear": ScheduleSpec("1 - t (MDLM, LLaDA)", LinearSchedule),
    "cosine": ScheduleSpec("cos(pi t / 2)", CosineSchedule),
    "polynomial": ScheduleSpec("1 - t^power (schedule_power, default 1)", PolynomialSchedule, takes_power=True),
    "sqrt": ScheduleSpec("1 - t^0.5", partial(PolynomialSchedule, 0.5)),
}


def describe_schedules() -> str:
    """``name: alpha(t) = formula`` for every schedule, for help texts."""
    return "; ".join(f"{name}: alpha(t) = {spec.formula}" for name, spec in SCHEDULES.items())


def make_schedule(name: str, power: float | None = None) -> MaskingSchedule:
    """Build a schedule by name (a key of :data:`SCHEDULES`); ``power`` only for those that take one.

    Raises:
        ValueError: unknown name, a ``power`` for a schedule without one, or ``power <= 0``.
    """
    spec = SCHEDULES.get(name)
    if spec is None:
        raise ValueError(f"unknown masking schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if power is None:
        return spec.build()
    if not spec.takes_power:
        powered = ", ".join(n for n, s in SCHEDULES.items() if s.takes_power)
        raise ValueError(f"schedule_power={power} was given with schedule {name!r}, which has no power "
                         f"(alpha(t) = {spec.formula}); it applies to: {powered}. Drop schedule_power or "
                         "choose that schedule.")
    return spec.build(power)
