"""The optimizers the lab can compare, by name: look-up, construction and ``--set`` values.

Every adaptim optimizer is available by its lower-case name. Named variants
make common settings one word (``momentum``, ``nesterov``, ``amsgrad``,
``rmsprop-centered``). ``name@flavor`` picks a framework flavor
(:mod:`adaptim.flavors`: ``@keras``, ``@tf1``, ``@optax``, ``@paper``; ``@torch``
is the default, ``@optax`` for the algorithms torch.optim lacks): the flavor's defaults apply to everything the lab does not
tune or fix.

The entries (:data:`VARIANTS`), with the learning-rate range each is tuned
over and why, are :mod:`adaptim.lab.variants`; what an entry is, and its
search space for ``--search random|tpe``, is :mod:`adaptim.lab.search_space`.
``adaptim optimizers`` lists every one.

A variant marked ``tuning_free`` (``adam-defaults``: Adam at the lr 1e-3 of
Kingma & Ba's paper) is never tuned: it runs at its published defaults, with
zero tuning runs, on the same re-run seeds as the tuned ones (AlgoPerf's
self-tuning ruleset), and the report charges every optimizer the steps its
tuning cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

import adaptim
from adaptim import flavors
from adaptim.lab.adapters import MechanicAdam
from adaptim.lab.defaults import DEFAULT_OPTIMIZERS
from adaptim.lab.errors import LabError, unknown_name
from adaptim.lab.search_space import Dimension, Scale, Variant
from adaptim.lab.variants import (
    ADAFACTOR_RANGE,
    ASGD_RANGE,
    MUON_RANGE,
    RPROP_RANGE,
    all_variants,
)

# The records moved to adaptim.lab.search_space, the table to adaptim.lab.variants;
# their names stay importable from here.
__all__ = [
    "ADAFACTOR_RANGE",
    "ASGD_RANGE",
    "DEFAULT_OPTIMIZERS",
    "FLAVORS",
    "MUON_RANGE",
    "RPROP_RANGE",
    "STATE_BYTES_SHAPE",
    "VARIANTS",
    "Dimension",
    "Scale",
    "Variant",
    "applicable",
    "make_optimizer",
    "parse_optimizer",
    "parse_settings",
    "parse_value",
    "state_bytes_per_parameter",
]

FLAVORS = flavors.FLAVORS

#: The parameter ``state_bytes_per_parameter`` measures on: a float32 matrix, large
#: enough that 8-bit states are quantised (bitsandbytes' 4096 elements) and
#: Adafactor factors its second moment, as for a layer's weights.
STATE_BYTES_SHAPE = (128, 128)


def state_bytes_per_parameter(name: str, shape: tuple[int, ...] = STATE_BYTES_SHAPE) -> float:
    """The optimizer state per parameter in bytes, *measured*: one step on a float32 tensor.

    The sum of ``nbytes`` of every tensor in the state after a step on a
    parameter of ``shape``, divided by its size (scalars such as ``step`` add
    a few hundred-thousandths). So it reflects the state's real format:
    fp32 Adam 8, ``adam-bf16`` 4, ``adam-8bit`` 2.03 (a byte per moment and a
    float32 maximum per block of 256), Adafactor's factored rows and columns
    0.0625 on 128×128. The lab's DoG counts the average of its iterates it
    keeps (:class:`~adaptim.lab.adapters.AveragedDoG`). Random values, so no entry degenerates (Prodigy keeps a
    0-d ``x0`` for an all-zero tensor).
    """
    generator = torch.Generator().manual_seed(0)
    numel = math.prod(shape)
    p = torch.randn(shape, generator=generator).requires_grad_(True)
    optimizer = make_optimizer(name, [p], {})
    train = getattr(optimizer, "train", None)
    if callable(train):  # Schedule-Free steps in train mode only
        train()
    p.grad = torch.randn(shape, generator=generator)
    optimizer.step()
    # a wrapper's (Mechanic's) own state and its base optimizer's
    states = [opt.state.get(p, {}) for opt in (optimizer, getattr(optimizer, "base", None)) if opt]
    nbytes = sum(v.nbytes for s in states for v in s.values() if isinstance(v, torch.Tensor))
    averager = getattr(optimizer, "averager", None)  # DoG's average of the iterates
    if averager is not None:
        nbytes += sum(v.nbytes for v in averager.averaged_model.state_dict().values())
    return nbytes / numel


VARIANTS: dict[str, Variant] = all_variants()


def parse_optimizer(spec: str) -> tuple[Variant, str]:
    """``"rmsprop"`` or ``"rmsprop@torch"`` to its variant and flavor."""
    name, _, flavor = spec.strip().partition("@")
    if name not in VARIANTS:
        raise unknown_name("optimizer", name, VARIANTS)
    variant = VARIANTS[name]
    flavor = flavor or variant.cls.algorithm.default_flavor
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
) -> adaptim.Optimizer | MechanicAdam:
    """Build the optimizer named ``spec`` with its fixed settings and ``hparams`` on top."""
    variant, flavor = parse_optimizer(spec)
    kwargs = {**variant.fixed, **hparams}
    if "beta2" in kwargs:  # a searched β₂: the first β keeps its fixed or default value
        beta2 = kwargs.pop("beta2")
        default = variant.cls.algorithm.defaults["betas"]
        kwargs["betas"] = (next(iter(kwargs.get("betas", default))), beta2)
    if flavor != "torch":
        kwargs["flavor"] = flavor
    try:
        return variant.cls(params, **kwargs)
    except (TypeError, ValueError) as error:
        raise LabError(f"cannot build optimizer {spec!r} with {kwargs}: {error}") from None


def applicable(optimizer: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``hparams`` that ``optimizer``'s algorithm accepts (a problem's fixed ones)."""
    variant, _ = parse_optimizer(optimizer)
    accepted = variant.cls.algorithm.defaults
    return {k: v for k, v in hparams.items() if k in accepted}


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
        allowed = variant.cls.algorithm.defaults
        if name not in allowed:
            raise unknown_name(
                f"hyperparameter of {optimizer}", name, allowed, f"hyperparameters of {optimizer}"
            )
        settings.setdefault(optimizer, {})[name] = parse_value(raw)
    for optimizer, fixed in settings.items():
        # Build once on a dummy parameter: a bad value fails here, before anything runs.
        make_optimizer(optimizer, [torch.zeros(1, requires_grad=True)], fixed)
    return settings
