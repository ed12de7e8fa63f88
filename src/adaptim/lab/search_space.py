"""The record each optimizer the lab compares is: a :class:`Variant` and its search space.

A :class:`Variant` names an optimizer setting (the class, the hyperparameters it
fixes) with the learning-rate range its grid spans and the other
hyperparameters ``--search random|tpe`` explores, each a :class:`Dimension`
with its range and scale. Decay rates near 1 are searched on ``1 − value`` in
log space (``log1m``), so 0.9, 0.99 and 0.999 are equally likely. The entries
themselves are :mod:`adaptim.lab.variants`; :mod:`adaptim.lab.optimizers`
looks them up by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import adaptim
from adaptim.lab.adapters import MechanicAdam

Scale = Literal["log", "log1m"]


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter: its name, range and scale.

    ``log``: log-uniform over [low, high]; ``log1m``: ``1 − value`` log-uniform,
    for decay rates close to 1. ``beta2`` stands for the second entry of
    ``betas`` (the first keeps its default).
    """

    name: str
    low: float
    high: float
    scale: Scale = "log"

    def from_unit(self, u: float) -> float:
        """The value at position ``u`` ∈ [0, 1] of the range, on its scale (4 significant digits)."""
        if self.scale == "log":
            value = 10 ** (
                math.log10(self.low) + u * (math.log10(self.high) - math.log10(self.low))
            )
        else:
            top, bottom = math.log10(1 - self.low), math.log10(1 - self.high)
            value = 1 - 10 ** (top + u * (bottom - top))
        return float(f"{value:.4g}")

    def describe(self) -> str:
        kind = "log" if self.scale == "log" else "log(1-x)"
        return f"{self.name} {self.low:g}–{self.high:g} ({kind})"

    def fixed_by(self, fixed: Mapping[str, Any]) -> bool:
        """Whether ``fixed`` (``--set``, the problem) already sets this hyperparameter."""
        return self.name in fixed or (self.name == "beta2" and "betas" in fixed)


def eps_around(default: float) -> Dimension:
    """ε searched over four decades around its ``default``."""
    return Dimension("eps", default / 100, default * 100)


# The dimensions many entries share.
BETA2 = Dimension("beta2", 0.9, 0.9999, "log1m")
MOMENTUM = Dimension("momentum", 0.5, 0.99, "log1m")
ALPHA = Dimension("alpha", 0.9, 0.999, "log1m")


@dataclass(frozen=True)
class Variant:
    """A named optimizer setting: the class, fixed hyperparameters and the search space."""

    name: str
    description: str
    cls: type[adaptim.Optimizer] | type[MechanicAdam]
    lr_range: tuple[float, float]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    #: The other hyperparameters ``--search random|tpe`` explores (the lr always comes first).
    extra_space: tuple[Dimension, ...] = ()
    #: Runs at its published defaults with zero tuning runs (AlgoPerf's self-tuning track).
    tuning_free: bool = False

    @property
    def space(self) -> tuple[Dimension, ...]:
        """The declared search space: the lr range, then ``extra_space``."""
        return (Dimension("lr", *self.lr_range), *self.extra_space)

    def lr_grid(self, points: int) -> list[float]:
        """``points`` learning rates, evenly spaced in log space over ``lr_range``."""
        low, high = (math.log10(x) for x in self.lr_range)
        if points == 1:
            return [10 ** ((low + high) / 2)]
        return [
            float(f"{10 ** (low + (high - low) * i / (points - 1)):.3g}") for i in range(points)
        ]
