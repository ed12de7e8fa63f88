"""The optimizers the lab can compare, by name, with the learning-rate range each is tuned over.

Every adaptim optimizer is available by its lower-case name. Named variants
make common settings one word (``momentum``, ``nesterov``, ``amsgrad``,
``rmsprop-centered``). ``name@flavor`` picks a framework flavor
(:mod:`adaptim.flavors`: ``@keras``, ``@tf1``, ``@optax``, ``@paper``; ``@torch``
is the default): the flavor's defaults apply to everything the lab does not
tune or fix.

Fairness: every optimizer gets the same number of learning rates, spaced
evenly in log space over the same width (three decades), centred where that
optimizer's good learning rates usually lie. The range is the only
per-optimizer prior, and it is stated here for all to see.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

import adaptim
from adaptim import flavors
from adaptim.lab.errors import LabError, unknown_name

FLAVORS = flavors.FLAVORS


@dataclass(frozen=True)
class Variant:
    """A named optimizer setting: the class, fixed hyperparameters and the lr search range."""

    name: str
    description: str
    cls: type[adaptim.Optimizer]
    lr_range: tuple[float, float]
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def lr_grid(self, points: int) -> list[float]:
        """``points`` learning rates, evenly spaced in log space over ``lr_range``."""
        low, high = (math.log10(x) for x in self.lr_range)
        if points == 1:
            return [10 ** ((low + high) / 2)]
        return [
            float(f"{10 ** (low + (high - low) * i / (points - 1)):.3g}") for i in range(points)
        ]


def _variants() -> dict[str, Variant]:
    adam_range = (1e-4, 1e-1)
    table = [
        Variant("sgd", "plain stochastic gradient descent", adaptim.SGD, (3e-3, 3.0)),
        Variant(
            "momentum",
            "SGD with heavy-ball momentum 0.9",
            adaptim.SGD,
            (1e-4, 1e-1),
            {"momentum": 0.9},
        ),
        Variant(
            "nesterov",
            "SGD with Nesterov momentum 0.9",
            adaptim.SGD,
            (1e-4, 1e-1),
            {"momentum": 0.9, "nesterov": True},
        ),
        Variant(
            "adagrad",
            "AdaGrad: steps shrink with the sum of squared gradients",
            adaptim.Adagrad,
            (3e-3, 3.0),
        ),
        Variant(
            "rmsprop",
            "RMSprop: steps scaled by a moving RMS of gradients",
            adaptim.RMSprop,
            (1e-5, 1e-2),
        ),
        Variant(
            "rmsprop-centered",
            "RMSprop normalised by the gradient's moving variance",
            adaptim.RMSprop,
            (1e-5, 1e-2),
            {"centered": True},
        ),
        Variant(
            "rmsprop-momentum",
            "RMSprop with momentum 0.9",
            adaptim.RMSprop,
            (1e-5, 1e-2),
            {"momentum": 0.9},
        ),
        Variant(
            "adadelta",
            "Adadelta: RMSprop with unit-corrected steps",
            adaptim.Adadelta,
            (1e-2, 10.0),
        ),
        Variant("adam", "Adam: bias-corrected first and second moments", adaptim.Adam, adam_range),
        Variant(
            "amsgrad",
            "AMSGrad: Adam with a non-decreasing second moment",
            adaptim.Adam,
            adam_range,
            {"amsgrad": True},
        ),
        Variant("adamw", "AdamW: Adam with decoupled weight decay 0.01", adaptim.AdamW, adam_range),
        Variant("adamax", "Adamax: Adam with the infinity norm", adaptim.Adamax, (1e-4, 1e-1)),
        Variant("nadam", "NAdam: Adam with Nesterov momentum", adaptim.NAdam, adam_range),
        Variant("radam", "RAdam: Adam with variance rectification", adaptim.RAdam, adam_range),
        Variant(
            "lars", "LARS: momentum SGD with per-layer trust ratios", adaptim.LARS, (1e-1, 1e2)
        ),
        Variant("lamb", "LAMB: Adam with per-layer trust ratios", adaptim.LAMB, (1e-4, 1e-1)),
    ]
    return {v.name: v for v in table}


VARIANTS: dict[str, Variant] = _variants()

DEFAULT_OPTIMIZERS = ("sgd", "momentum", "adagrad", "rmsprop", "adam")


def parse_optimizer(spec: str) -> tuple[Variant, str]:
    """``"rmsprop"`` or ``"rmsprop@torch"`` to its variant and flavor."""
    name, _, flavor = spec.strip().partition("@")
    if name not in VARIANTS:
        raise unknown_name("optimizer", name, VARIANTS)
    flavor = flavor or "torch"
    variant = VARIANTS[name]
    if flavor not in FLAVORS:
        raise LabError(f"unknown flavor {flavor!r} in {spec!r} (valid: {', '.join(FLAVORS)})")
    allowed = flavors.available(
        variant.cls.algorithm.name, amsgrad=bool(variant.fixed.get("amsgrad"))
    )
    if flavor not in allowed:
        raise LabError(
            f"flavor {flavor!r} does not exist for {name!r} (valid: {', '.join(allowed)})"
        )
    return variant, flavor


def make_optimizer(
    spec: str, params: Iterable[torch.Tensor], hparams: Mapping[str, Any]
) -> adaptim.Optimizer:
    """Build the optimizer named ``spec`` with its fixed settings and ``hparams`` on top."""
    variant, flavor = parse_optimizer(spec)
    kwargs = {**variant.fixed, **hparams}
    if flavor != "torch":
        kwargs["flavor"] = flavor
    try:
        return variant.cls(params, **kwargs)
    except (TypeError, ValueError) as error:
        raise LabError(f"cannot build optimizer {spec!r} with {kwargs}: {error}") from None


def parse_value(text: str) -> Any:
    """A ``--set`` value: a bool, an int, a float, or a comma-separated tuple of numbers."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if "," in text:
        return tuple(parse_value(part) for part in text.split(","))
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise LabError(
            f"cannot read value {text!r}: expected a number, true/false, or numbers separated by commas"
        ) from None
    if not math.isfinite(number):
        raise LabError(f"cannot use value {text!r}: expected a finite number")
    return number


def parse_settings(items: Iterable[str], optimizers: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``["adam.lr=0.01", "sgd.momentum=0.5"]`` to ``{"adam": {"lr": 0.01}, ...}``.

    Keys are the optimizer specs as given to ``--optimizers``; every setting
    must name one of them and a hyperparameter that optimizer accepts.
    """
    chosen = list(optimizers)
    settings: dict[str, dict[str, Any]] = {}
    for item in items:
        target, equals, raw = item.partition("=")
        optimizer, dot, name = target.strip().rpartition(".")
        if not equals or not dot or not optimizer or not name or not raw.strip():
            raise LabError(
                f"malformed --set {item!r}: expected OPTIMIZER.PARAM=VALUE, for example adam.lr=0.01"
            )
        if optimizer not in chosen:
            raise LabError(
                f"--set {item!r} names optimizer {optimizer!r}, which is not being compared "
                f"(compared: {', '.join(chosen)})"
            )
        variant, _ = parse_optimizer(optimizer)
        allowed = adaptim.algorithms.ALGORITHMS[variant.cls.algorithm.name].defaults
        if name not in allowed:
            raise unknown_name(
                f"hyperparameter of {optimizer}", name, allowed, f"hyperparameters of {optimizer}"
            )
        settings.setdefault(optimizer, {})[name] = parse_value(raw)
    for optimizer, fixed in settings.items():
        # Build once on a dummy parameter: a bad value fails here, before anything runs.
        make_optimizer(optimizer, [torch.zeros(1, requires_grad=True)], fixed)
    return settings
