"""``flavor="optax"`` against the real optax (JAX on CPU, 64-bit enabled).

Every optax alias adaptim has a twin of runs on the same parameters and
gradients as the adaptim optimizer built with ``flavor="optax"`` and the same
hyperparameters; float64 must agree to 1e-10 relative and float32 to 1e-4
after :data:`~_flavors.STEPS` steps (see :mod:`_flavors`). The last test
checks that the comparison can fail: torch's own flavor is far from optax
where the two differ.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import random

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from _flavors import (
    BETA1,
    BETA2,
    DECAY,
    EPS,
    LR,
    MOMENTUM,
    WEIGHT_DECAY,
    Arrays,
    Variant,
    assert_matches,
    compare,
    hypothesis_case,
    lr_factor,
    random_case,
)
from _parity import Range
from hypothesis import given, settings
from hypothesis import strategies as st

# Test dependencies CI installs: missing ones must fail, not skip.
jax = importlib.import_module("jax")
optax = importlib.import_module("optax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

TOLERANCE = {np.float64: 1e-10, np.float32: 1e-4}


def run_optax(make: Callable[[Mapping[str, Any]], Any]) -> Callable[..., Arrays]:
    """A reference that runs the optax transformation ``make(hparams)``."""

    def reference(
        params0: Arrays, grads: Sequence[Arrays], hp: Mapping[str, Any], dtype: np.dtype
    ) -> Arrays:
        transformation = make(hp)
        params = [jnp.asarray(p, dtype=dtype) for p in params0]
        state = transformation.init(params)
        for step_grads in grads:
            g = [jnp.asarray(x, dtype=dtype) for x in step_grads]
            updates, state = transformation.update(g, state, params)
            params = optax.apply_updates(params, updates)
        return [np.asarray(p) for p in params]

    return reference


def _adam_space() -> dict[str, Range]:
    return {"lr": LR, "beta1": BETA1, "beta2": BETA2, "eps": EPS}


def _adam_ours(hp: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "flavor": "optax",
        "lr": hp["lr"],
        "betas": (hp["beta1"], hp["beta2"]),
        "eps": hp["eps"],
        **extra,
    }


def _rmsprop(name: str, centered: bool, momentum: bool) -> Variant:
    space = {"lr": LR, "alpha": DECAY, "eps": EPS}
    if momentum:
        space["momentum"] = MOMENTUM
    if centered:  # sqrt(v - g_avg^2 + eps) is rounding noise for tiny eps in float32
        space["eps"] = Range(1e-4, 1e-1, "log")

    def ours(hp: Mapping[str, Any]) -> dict[str, Any]:
        return {"flavor": "optax", "centered": centered, **hp}

    def make(hp: Mapping[str, Any]) -> Any:
        lr = hp["lr"]
        return optax.rmsprop(
            (lambda count: lr * lr_factor(count)) if momentum else lr,
            decay=hp["alpha"],
            eps=hp["eps"],
            centered=centered,
            momentum=hp["momentum"] if momentum else None,
        )

    # with momentum, a changing lr shows that optax scales before the trace
    return Variant(name, "rmsprop", ours, run_optax(make), space, scheduled=momentum)


VARIANTS = [
    Variant(
        "adagrad",
        "adagrad",
        lambda hp: {"flavor": "optax", **hp},
        run_optax(
            lambda hp: optax.adagrad(
                hp["lr"], initial_accumulator_value=hp["initial_accumulator_value"], eps=hp["eps"]
            )
        ),
        {"lr": LR, "eps": EPS, "initial_accumulator_value": Range(1e-2, 1.0, "log")},
    ),
    _rmsprop("rmsprop", centered=False, momentum=False),
    _rmsprop("rmsprop-centered", centered=True, momentum=False),
    _rmsprop("rmsprop-momentum", centered=False, momentum=True),
    _rmsprop("rmsprop-centered-momentum", centered=True, momentum=True),
    Variant(
        "adam",
        "adam",
        _adam_ours,
        run_optax(lambda hp: optax.adam(hp["lr"], b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"])),
        _adam_space(),
    ),
    Variant(
        "amsgrad",
        "adam",
        lambda hp: _adam_ours(hp, amsgrad=True),
        run_optax(
            lambda hp: optax.amsgrad(hp["lr"], b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"])
        ),
        _adam_space(),
    ),
    Variant(
        "adamw",
        "adamw",
        lambda hp: _adam_ours(hp, weight_decay=hp["weight_decay"]),
        run_optax(
            lambda hp: optax.adamw(
                hp["lr"],
                b1=hp["beta1"],
                b2=hp["beta2"],
                eps=hp["eps"],
                weight_decay=hp["weight_decay"],
            )
        ),
        {**_adam_space(), "weight_decay": WEIGHT_DECAY},
    ),
    Variant(
        "adamax",
        "adamax",
        _adam_ours,
        run_optax(lambda hp: optax.adamax(hp["lr"], b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"])),
        _adam_space(),
    ),
    Variant(
        "nadam",
        "nadam",
        _adam_ours,
        run_optax(lambda hp: optax.nadam(hp["lr"], b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"])),
        _adam_space(),
    ),
    Variant(
        "radam",
        "radam",
        _adam_ours,
        run_optax(lambda hp: optax.radam(hp["lr"], b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"])),
        _adam_space(),
    ),
    Variant(
        "adadelta",
        "adadelta",
        lambda hp: {"flavor": "optax", **hp},
        run_optax(
            lambda hp: optax.adadelta(
                hp["lr"], rho=hp["rho"], eps=hp["eps"], weight_decay=hp["weight_decay"]
            )
        ),
        {"lr": Range(1e-2, 1.0, "log"), "rho": DECAY, "eps": EPS, "weight_decay": WEIGHT_DECAY},
    ),
]
BY_NAME = {v.name: v for v in VARIANTS}


@pytest.mark.parametrize("variant", [pytest.param(v, id=v.name) for v in VARIANTS])
@settings(max_examples=6)
@given(data=st.data())
def test_matches_optax(variant: Variant, data: st.DataObject) -> None:
    assert_matches(variant, hypothesis_case(data, variant), TOLERANCE)


# Where optax and torch differ, torch's flavor must fail the same comparison.
DIFFERENT_FROM_TORCH = ["adagrad", "rmsprop", "rmsprop-momentum", "amsgrad", "nadam", "radam"]


@pytest.mark.parametrize("name", DIFFERENT_FROM_TORCH)
def test_torch_flavor_does_not_match_optax(name: str) -> None:
    variant = BY_NAME[name]
    as_torch = dataclasses.replace(variant, ours=lambda hp: {**variant.ours(hp), "flavor": "torch"})
    case = random_case(random.Random(name), variant)
    case.hparams.update({"eps": 0.1, "lr": 0.05})
    if "momentum" in case.hparams:
        case.hparams["momentum"] = 0.9
    if name == "radam":
        case.hparams["beta2"] = 0.999
    # the same case passes with the optax flavor and fails with torch's
    assert compare(variant, case, np.float64) <= TOLERANCE[np.float64]
    assert compare(as_torch, case, np.float64) > 1e-6
