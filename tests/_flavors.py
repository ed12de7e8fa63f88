"""Shared machinery of the flavor tests: cases, gradient streams, runs and errors.

A *case* is everything random about one comparison: the hyperparameters, the
parameter shapes, the scale and offset of the gradients and their seed. Both
adaptim and the reference (Keras 3, optax, TF1 or a float64 transcription of a
paper) start from the same parameters and take the same :data:`STEPS`
gradients, fixed in advance; the worst relative error over the parameters,

    rel(a, b) = max|a - b| / max(max|b|, tiny),

must stay within the tolerance of the comparison; ``max|b|`` is taken over the
initial and the final values of the parameter, so that a one-element parameter
that happens to end near zero does not turn rounding into a large "relative"
error. ``eps`` is drawn up to 1e-1,
where its placement changes the result by far more than any tolerance.

``benchmarks/flavor_parity_table.py`` draws cases from the same spaces with a
seeded ``random.Random`` and prints the worst error per variant.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from _parity import Range
from hypothesis import strategies as st

import adaptim
import adaptim.numpy as anp

#: Steps of every comparison.
STEPS = 100

LR = Range(1e-4, 1e-1, "log")
EPS = Range(1e-8, 1e-1, "log")
BETA1 = Range(0.0, 0.99)
BETA2 = Range(0.5, 0.9999, "log1m")
DECAY = Range(0.5, 0.999, "log1m")  # RMSprop's alpha / rho
MOMENTUM = Range(0.0, 0.95)
WEIGHT_DECAY = Range(1e-4, 1e-1, "log")

#: Shapes drawn for the parameters: a 0-d scale, biases, weights.
SHAPES: tuple[tuple[int, ...], ...] = ((), (5,), (1,), (3, 4), (2, 3, 2))

Arrays = list[np.ndarray]
#: Runs the reference: initial parameters, gradients per step, hyperparameters, dtype.
Reference = Callable[[Arrays, Sequence[Arrays], Mapping[str, Any], np.dtype], Arrays]


@dataclass(frozen=True)
class Variant:
    """One algorithm in one flavor, with the space of its drawn hyperparameters.

    ``ours`` maps drawn hyperparameters to the adaptim constructor's keyword
    arguments (``flavor`` included); ``reference`` runs the real thing.
    """

    name: str
    optimizer: str
    ours: Callable[[Mapping[str, Any]], dict[str, Any]] = field(repr=False)
    reference: Reference = field(repr=False)
    space: Mapping[str, Range] = field(repr=False)
    #: Whether the learning rate alternates between ``lr`` and ``lr/2`` (see :func:`lr_factor`),
    #: which shows where ``lr`` enters a momentum buffer.
    scheduled: bool = False


def lr_factor(step: Any) -> Any:
    """The learning-rate multiplier of step ``step`` (counted from 0): 1, 1/2, 1, 1/2, ..."""
    return 1.0 - 0.5 * (step % 2)


@dataclass(frozen=True)
class Case:
    hparams: dict[str, float]
    shapes: tuple[tuple[int, ...], ...]
    grad_scale: float
    grad_offset: float
    seed: int


def draw_case(
    variant: Variant, value: Callable[[Range, str], float], pick: Callable[[int], int]
) -> Case:
    """A case from ``value`` (a number in a range) and ``pick`` (an index below n)."""
    hparams = {name: value(r, name) for name, r in variant.space.items()}
    count = 1 + pick(3)
    shapes = tuple(SHAPES[pick(len(SHAPES))] for _ in range(count))
    return Case(
        hparams=hparams,
        shapes=shapes,
        grad_scale=value(Range(1e-2, 1e2, "log"), "grad_scale"),
        grad_offset=value(Range(0.0, 2.0), "grad_offset"),
        seed=pick(2**31),
    )


def hypothesis_case(data: st.DataObject, variant: Variant) -> Case:
    def value(r: Range, label: str) -> float:
        return data.draw(st.floats(0.0, 1.0).map(r.at), label=label)

    def pick(n: int) -> int:
        return data.draw(st.integers(0, n - 1))

    return draw_case(variant, value, pick)


def random_case(rng: random.Random, variant: Variant) -> Case:
    return draw_case(variant, lambda r, _: r.at(rng.random()), lambda n: rng.randrange(n))


def start(case: Case) -> tuple[Arrays, list[Arrays]]:
    """Initial parameters and the gradients of every step, in float64."""
    rng = np.random.default_rng(case.seed)
    params = [rng.standard_normal(shape) for shape in case.shapes]
    grads = [
        [case.grad_scale * (rng.standard_normal(shape) + case.grad_offset) for shape in case.shapes]
        for _ in range(STEPS)
    ]
    return params, grads


def run_torch(
    variant: Variant, case: Case, dtype: np.dtype, params0: Arrays, grads: Sequence[Arrays]
) -> Arrays:
    """The adaptim torch front-end on the case (float64 runs keep scalar state in float64)."""
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        params = [torch.tensor(p, dtype=torch_dtype, requires_grad=True) for p in params0]
        optimizer = adaptim.OPTIMIZERS[variant.optimizer](params, **variant.ours(case.hparams))
        for step, step_grads in enumerate(grads):
            for p, g in zip(params, step_grads, strict=True):
                p.grad = torch.tensor(g, dtype=torch_dtype)
            if variant.scheduled:
                for group in optimizer.param_groups:
                    group["lr"] = case.hparams["lr"] * lr_factor(step)
            optimizer.step()
        return [p.detach().numpy().copy() for p in params]
    finally:
        torch.set_default_dtype(previous)


def run_numpy(
    variant: Variant, case: Case, dtype: np.dtype, params0: Arrays, grads: Sequence[Arrays]
) -> Arrays:
    """The adaptim NumPy front-end on the case."""
    params = [p.astype(dtype) for p in params0]
    optimizer = anp.OPTIMIZERS[variant.optimizer](params, **variant.ours(case.hparams))
    for step, step_grads in enumerate(grads):
        if variant.scheduled:
            for group in optimizer.param_groups:
                group["lr"] = case.hparams["lr"] * lr_factor(step)
        optimizer.step([g.astype(dtype) for g in step_grads])
    return params


def relative_error(ours: Arrays, theirs: Arrays, initial: Arrays) -> float:
    """The worst of ``max|a - b| / max(max|b|, max|b0|, tiny)`` over the parameters; NaN is inf."""
    worst = 0.0
    for a, b, b0 in zip(ours, theirs, initial, strict=True):
        a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if not (np.isfinite(a64).all() and np.isfinite(b64).all()):
            return math.inf
        magnitude = max(np.max(np.abs(b64), initial=0.0), np.max(np.abs(b0), initial=0.0))
        scale = max(float(magnitude), np.finfo(np.asarray(b).dtype).tiny)
        worst = max(worst, float(np.max(np.abs(a64 - b64), initial=0.0)) / scale)
    return worst


def compare(
    variant: Variant,
    case: Case,
    dtype: type[np.floating[Any]],
    front_ends: Sequence[str] = ("torch",),
) -> float:
    """The worst relative error of adaptim's ``front_ends`` (``"torch"``, ``"numpy"``)
    against the reference, which runs once."""
    params0, grads = start(case)
    theirs = variant.reference(
        [p.astype(dtype) for p in params0],
        [[g.astype(dtype) for g in gs] for gs in grads],
        case.hparams,
        np.dtype(dtype),
    )
    runs = {"torch": run_torch, "numpy": run_numpy}
    return max(
        relative_error(runs[front](variant, case, np.dtype(dtype), params0, grads), theirs, params0)
        for front in front_ends
    )


def assert_matches(
    variant: Variant, case: Case, tolerance: Mapping[type[np.floating[Any]], float]
) -> None:
    """``compare`` in float64 and float32, each within its tolerance."""
    for dtype in (np.float64, np.float32):
        error = compare(variant, case, dtype)
        assert error <= tolerance[dtype], f"{variant.name} {dtype.__name__}: {error:.3g} {case}"
