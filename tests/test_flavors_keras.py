"""``flavor="keras"`` against the real Keras 3 optimizers, on Keras' torch backend.

Keras runs each optimizer of ``keras.optimizers`` with its torch-backend
implementation (``keras/src/backend/torch/optimizers/``); adaptim runs the same
algorithm built with ``flavor="keras"`` and the same hyperparameters, weight
decay included (Keras applies it, decoupled, in its base optimizer). float64
must agree to 1e-6 relative and float32 to 1e-4 after
:data:`~_flavors.STEPS` steps. Keras keeps its learning rate in a variable
of ``keras.config.floatx()``; it is set to the dtype of each run, so float64
runs see the very same learning rate.

Keras computes its bias corrections in the variables' dtype: in float32,
``1 - beta_2**t`` loses about ``6e-8 / (1 - beta_2)`` of relative precision
(torch, optax and adaptim compute it in float64). With ``beta_2`` up to
0.9999 that alone moved float32 Adam by up to 9e-4; ``beta_2`` is drawn up
to 0.999 here, which keeps float32 within 1e-4.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import random

os.environ.setdefault("KERAS_BACKEND", "torch")

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch
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

# A test dependency CI installs: a missing Keras must fail, not skip.
keras = importlib.import_module("keras")
assert keras.backend.backend() == "torch", "these tests need KERAS_BACKEND=torch"

TOLERANCE = {np.float64: 1e-6, np.float32: 1e-4}

# Keras' torch backend converts with np.array(x) on every step (NumPy 2 copy= deprecation).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


class _Alternating(keras.optimizers.schedules.LearningRateSchedule):  # type: ignore[misc]
    """``lr``, ``lr/2``, ``lr``, ...: shows where ``lr`` enters the momentum buffer."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def __call__(self, step: Any) -> Any:
        # in floatx, the dtype of the run: an integer step would give torch's float32
        return self.lr * lr_factor(keras.ops.cast(step, keras.config.floatx()))


def run_keras(make: Callable[[Mapping[str, Any], Any], Any]) -> Callable[..., Arrays]:
    """A reference that runs the Keras optimizer ``make(hparams, learning_rate)``."""

    def reference(
        params0: Arrays, grads: Sequence[Arrays], hp: Mapping[str, Any], dtype: np.dtype
    ) -> Arrays:
        previous = keras.config.floatx()
        keras.config.set_floatx(str(dtype))
        try:
            variables = [keras.Variable(p, dtype=str(dtype)) for p in params0]
            optimizer = make(hp, hp["lr"])
            for step_grads in grads:
                optimizer.apply_gradients(
                    zip([torch.tensor(g) for g in step_grads], variables, strict=True)
                )
            return [keras.ops.convert_to_numpy(v.value).copy() for v in variables]
        finally:
            keras.config.set_floatx(previous)

    return reference


KERAS_BETA2 = Range(BETA2.low, 0.999, "log1m")


def _adam_space(**extra: Range) -> dict[str, Range]:
    return {"lr": LR, "beta1": BETA1, "beta2": KERAS_BETA2, "eps": EPS, **extra}


def _adam_ours(hp: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "flavor": "keras",
        "lr": hp["lr"],
        "betas": (hp["beta1"], hp["beta2"]),
        "eps": hp["eps"],
        "weight_decay": hp["weight_decay"],
        **extra,
    }


def _adam_keras(hp: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "beta_1": hp["beta1"],
        "beta_2": hp["beta2"],
        "epsilon": hp["eps"],
        "weight_decay": hp["weight_decay"],
    }


def _rmsprop(name: str, centered: bool, momentum: bool) -> Variant:
    space = {"lr": LR, "alpha": DECAY, "eps": EPS, "weight_decay": WEIGHT_DECAY}
    if momentum:
        space["momentum"] = MOMENTUM
    if centered:  # sqrt(v - g_avg^2 + eps) is rounding noise for tiny eps in float32
        space["eps"] = Range(1e-4, 1e-1, "log")

    def ours(hp: Mapping[str, Any]) -> dict[str, Any]:
        return {"flavor": "keras", "centered": centered, **hp}

    def make(hp: Mapping[str, Any], lr: float) -> Any:
        return keras.optimizers.RMSprop(
            _Alternating(lr) if momentum else lr,
            rho=hp["alpha"],
            momentum=hp.get("momentum", 0.0),
            epsilon=hp["eps"],
            centered=centered,
            weight_decay=hp["weight_decay"],
        )

    return Variant(name, "rmsprop", ours, run_keras(make), space, scheduled=momentum)


VARIANTS = [
    Variant(
        "adagrad",
        "adagrad",
        lambda hp: {"flavor": "keras", **hp},
        run_keras(
            lambda hp, lr: keras.optimizers.Adagrad(
                lr,
                initial_accumulator_value=hp["initial_accumulator_value"],
                epsilon=hp["eps"],
                weight_decay=hp["weight_decay"],
            )
        ),
        {
            "lr": LR,
            "eps": EPS,
            "initial_accumulator_value": Range(1e-2, 1.0, "log"),
            "weight_decay": WEIGHT_DECAY,
        },
    ),
    _rmsprop("rmsprop", centered=False, momentum=False),
    _rmsprop("rmsprop-centered", centered=True, momentum=False),
    _rmsprop("rmsprop-momentum", centered=False, momentum=True),
    _rmsprop("rmsprop-centered-momentum", centered=True, momentum=True),
    Variant(
        "adam",
        "adam",
        _adam_ours,
        run_keras(lambda hp, lr: keras.optimizers.Adam(lr, **_adam_keras(hp))),
        _adam_space(weight_decay=WEIGHT_DECAY),
    ),
    Variant(
        "amsgrad",
        "adam",
        lambda hp: _adam_ours(hp, amsgrad=True),
        run_keras(lambda hp, lr: keras.optimizers.Adam(lr, amsgrad=True, **_adam_keras(hp))),
        _adam_space(weight_decay=WEIGHT_DECAY),
    ),
    Variant(
        "adamw",
        "adamw",
        _adam_ours,
        run_keras(lambda hp, lr: keras.optimizers.AdamW(lr, **_adam_keras(hp))),
        _adam_space(weight_decay=WEIGHT_DECAY),
    ),
    Variant(
        "adamax",
        "adamax",
        _adam_ours,
        run_keras(lambda hp, lr: keras.optimizers.Adamax(lr, **_adam_keras(hp))),
        _adam_space(weight_decay=WEIGHT_DECAY),
    ),
    Variant(
        "nadam",
        "nadam",
        _adam_ours,
        run_keras(lambda hp, lr: keras.optimizers.Nadam(lr, **_adam_keras(hp))),
        _adam_space(weight_decay=WEIGHT_DECAY),
    ),
    Variant(
        "adadelta",
        "adadelta",
        lambda hp: {"flavor": "keras", **hp},
        run_keras(
            lambda hp, lr: keras.optimizers.Adadelta(
                lr, rho=hp["rho"], epsilon=hp["eps"], weight_decay=hp["weight_decay"]
            )
        ),
        {"lr": Range(1e-2, 1.0, "log"), "rho": DECAY, "eps": EPS, "weight_decay": WEIGHT_DECAY},
    ),
]
BY_NAME = {v.name: v for v in VARIANTS}


@pytest.mark.parametrize("variant", [pytest.param(v, id=v.name) for v in VARIANTS])
@settings(max_examples=6)
@given(data=st.data())
def test_matches_keras(variant: Variant, data: st.DataObject) -> None:
    assert_matches(variant, hypothesis_case(data, variant), TOLERANCE)


@pytest.mark.parametrize("name", ["adagrad", "rmsprop-momentum", "adam", "adamax", "nadam"])
def test_torch_flavor_does_not_match_keras(name: str) -> None:
    """The same case passes with the Keras flavor and fails with torch's."""
    variant = BY_NAME[name]
    as_torch = dataclasses.replace(variant, ours=lambda hp: {**variant.ours(hp), "flavor": "torch"})
    case = random_case(random.Random(name), variant)
    case.hparams.update({"eps": 0.1, "lr": 0.05, "weight_decay": 0.0})
    assert compare(variant, case, np.float64) <= TOLERANCE[np.float64]
    assert compare(as_torch, case, np.float64) > 10 * TOLERANCE[np.float64]
