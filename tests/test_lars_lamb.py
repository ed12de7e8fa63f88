"""LARS and LAMB against an independent transcription of the papers.

torch.optim has neither optimizer, so the reference here is written from the
equations alone: You, Gitman & Ginsburg 2017 ("Large Batch Training of
Convolutional Networks", Algorithm 1) for LARS and You et al. 2020 ("Large
Batch Optimization for Deep Learning", Algorithm 2) for LAMB, with the variant
options that adaptim's docstrings state. The transcription works in float64,
one layer at a time, with ``np.linalg.norm`` and explicit branches, and shares
no code with adaptim.

Both front-ends (``adaptim.LARS``/``adaptim.LAMB`` on torch tensors and
``adaptim.numpy.LARS``/``adaptim.numpy.LAMB``) must follow it for 200 steps.
Errors are relative per tensor, to the largest magnitude the tensor reaches
along the reference trajectory: ``max|actual - expected| / max_t max|expected_t|``,
so that a bias which ends near zero does not inflate float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim
import adaptim.numpy as anp

STEPS = 200

# Relative tolerance against the float64 transcription, per working dtype.
TOLERANCES = {np.float64: 1e-10, np.float32: 1e-4}


# -- the transcription of the papers ------------------------------------------------


class ReferenceLARS:
    """LARS, Algorithm 1 of You, Gitman & Ginsburg (2017), plus adaptim's documented options.

    For every layer ``l``::

        local_lr = eta * ||w|| / (||g|| + beta * ||w|| + eps)   (1 if ||w|| = 0 or ||g|| = 0)
        local_lr = min(local_lr, 1)                              (trust_clip only)
        v = m * v + lr * local_lr * (g + beta * w)
        w = w - v

    With ``exclude_bias_and_norm``, tensors of at most one dimension take
    ``v = m * v + lr * g``: no trust ratio, no weight decay. The last
    ``local_lr`` of a layer is what adaptim keeps as ``trust_ratio``.
    """

    def __init__(
        self,
        params: Sequence[np.ndarray],
        *,
        lr: float,
        momentum: float,
        weight_decay: float,
        trust_coefficient: float,
        eps: float,
        trust_clip: bool,
        exclude_bias_and_norm: bool,
        maximize: bool,
    ) -> None:
        self.params = [np.array(p, dtype=np.float64) for p in params]
        self.velocity = [np.zeros_like(w) for w in self.params]
        self.last_ratio: dict[int, float] = {}
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.trust_coefficient = trust_coefficient
        self.eps = eps
        self.trust_clip = trust_clip
        self.exclude_bias_and_norm = exclude_bias_and_norm
        self.maximize = maximize

    def local_lr(self, w: np.ndarray, g: np.ndarray) -> float:
        w_norm = np.linalg.norm(w)
        g_norm = np.linalg.norm(g)
        if w_norm == 0 or g_norm == 0:
            local_lr = 1.0
        else:
            local_lr = (
                self.trust_coefficient * w_norm / (g_norm + self.weight_decay * w_norm + self.eps)
            )
        if self.trust_clip:
            local_lr = min(local_lr, 1.0)
        return local_lr

    def step(self, grads: Sequence[np.ndarray]) -> None:
        for layer, grad in enumerate(grads):
            w = self.params[layer]
            g = np.array(grad, dtype=np.float64)
            if self.maximize:
                g = -g
            if self.exclude_bias_and_norm and w.ndim <= 1:
                change = self.lr * g
            else:
                self.last_ratio[layer] = self.local_lr(w, g)
                change = self.lr * self.last_ratio[layer] * (g + self.weight_decay * w)
            self.velocity[layer] = self.momentum * self.velocity[layer] + change
            self.params[layer] = w - self.velocity[layer]

    def state(self, layer: int) -> dict[str, Any]:
        """The state under adaptim's names: no buffer without momentum; the last local rate."""
        state: dict[str, Any] = {"momentum_buffer": self.velocity[layer]} if self.momentum else {}
        if layer in self.last_ratio:
            state["trust_ratio"] = self.last_ratio[layer]
        return state


class ReferenceLAMB:
    """LAMB, Algorithm 2 of You et al. (2020), plus adaptim's documented options.

    For every layer ``x`` at step ``t``::

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        m_hat = m / (1 - beta1**t),  v_hat = v / (1 - beta2**t)   (as is without bias_correction)
        r = m_hat / (sqrt(v_hat) + eps)
        u = r + lambda * x
        x = x - lr * phi(||x||) / ||u|| * u,  phi(z) = min(max(z, low), high)

    ``weight_norm_clip=None`` makes ``phi`` the identity; the ratio is 1 when
    ``||x|| = 0`` or ``||u|| = 0``. With ``exclude_bias_and_norm``, tensors of at
    most one dimension take ``x = x - lr * r``. The last trust ratio
    ``phi(||x||) / ||u||`` of a layer is what adaptim keeps as ``trust_ratio``.
    """

    def __init__(
        self,
        params: Sequence[np.ndarray],
        *,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        bias_correction: bool,
        weight_norm_clip: tuple[float, float] | None,
        exclude_bias_and_norm: bool,
        maximize: bool,
    ) -> None:
        self.params = [np.array(p, dtype=np.float64) for p in params]
        self.first = [np.zeros_like(x) for x in self.params]
        self.second = [np.zeros_like(x) for x in self.params]
        self.last_ratio: dict[int, float] = {}
        self.t = 0
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.bias_correction = bias_correction
        self.weight_norm_clip = weight_norm_clip
        self.exclude_bias_and_norm = exclude_bias_and_norm
        self.maximize = maximize

    def phi(self, norm: float) -> float:
        if self.weight_norm_clip is None:
            return norm
        low, high = self.weight_norm_clip
        return min(max(norm, low), high)

    def trust_ratio(self, x: np.ndarray, u: np.ndarray) -> float:
        x_norm = np.linalg.norm(x)
        u_norm = np.linalg.norm(u)
        if x_norm == 0 or u_norm == 0:
            return 1.0
        return self.phi(x_norm) / u_norm

    def step(self, grads: Sequence[np.ndarray]) -> None:
        self.t += 1
        t = self.t
        for layer, grad in enumerate(grads):
            x = self.params[layer]
            g = np.array(grad, dtype=np.float64)
            if self.maximize:
                g = -g
            m = self.beta1 * self.first[layer] + (1 - self.beta1) * g
            v = self.beta2 * self.second[layer] + (1 - self.beta2) * g**2
            self.first[layer], self.second[layer] = m, v
            if self.bias_correction:
                m_hat = m / (1 - self.beta1**t)
                v_hat = v / (1 - self.beta2**t)
            else:
                m_hat, v_hat = m, v
            r = m_hat / (np.sqrt(v_hat) + self.eps)
            if self.exclude_bias_and_norm and x.ndim <= 1:
                self.params[layer] = x - self.lr * r
                continue
            u = r + self.weight_decay * x
            self.last_ratio[layer] = self.trust_ratio(x, u)
            self.params[layer] = x - self.lr * self.last_ratio[layer] * u

    def state(self, layer: int) -> dict[str, Any]:
        """The state under adaptim's (torch's Adam) names, and the last trust ratio."""
        state = {"step": self.t, "exp_avg": self.first[layer], "exp_avg_sq": self.second[layer]}
        if layer in self.last_ratio:
            state["trust_ratio"] = self.last_ratio[layer]
        return state


# -- hyperparameters and problems ----------------------------------------------------


def log_uniform(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(np.log10(low), np.log10(high)).map(lambda e: float(10.0**e))


def maybe_zero(strategy: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    return st.just(0.0) | strategy


LARS_HPARAMS = st.fixed_dictionaries(
    {
        "lr": log_uniform(1e-2, 2.0),
        "momentum": maybe_zero(st.floats(0.0, 0.95)),
        "weight_decay": maybe_zero(log_uniform(1e-5, 1e-1)),
        "trust_coefficient": log_uniform(1e-4, 1e-2),
        "eps": maybe_zero(log_uniform(1e-12, 1e-3)),
        "trust_clip": st.booleans(),
        "exclude_bias_and_norm": st.booleans(),
        "maximize": st.booleans(),
    }
)

# adaptim (as torch) forms the moving average as lerp(m, g, 1 - beta1), where a tiny
# beta1 is lost to rounding in 1 - (1 - beta1); such values probe that rounding only.
BETA1 = st.just(0.0) | st.floats(0.01, 0.99)

LAMB_HPARAMS = st.fixed_dictionaries(
    {
        "lr": log_uniform(1e-4, 1e-1),
        "betas": st.tuples(BETA1, st.floats(0.5, 0.9999)),
        "eps": log_uniform(1e-10, 1e-2),
        "weight_decay": maybe_zero(log_uniform(1e-5, 1e-1)),
        "bias_correction": st.booleans(),
        "weight_norm_clip": st.none() | st.tuples(st.floats(0.0, 1.0), st.floats(1.0, 20.0)),
        "exclude_bias_and_norm": st.booleans(),
        "maximize": st.booleans(),
    }
)


@dataclass(frozen=True)
class Case:
    """One optimizer under test: its reference, its two adaptim front-ends, its hyperparameters."""

    reference: Callable[..., ReferenceLARS | ReferenceLAMB]
    torch_class: type[torch.optim.Optimizer]
    numpy_class: type[anp.Optimizer]
    hparams: st.SearchStrategy[dict[str, Any]]


CASES = {
    "lars": Case(ReferenceLARS, adaptim.LARS, anp.LARS, LARS_HPARAMS),
    "lamb": Case(ReferenceLAMB, adaptim.LAMB, anp.LAMB, LAMB_HPARAMS),
}

# Layers: a 2-d (dense) or 4-d (convolution) weight, each with its 1-d bias.
WEIGHT_SHAPES = st.lists(st.integers(1, 4), min_size=2, max_size=2) | st.lists(
    st.integers(1, 3), min_size=4, max_size=4
)


@dataclass(frozen=True)
class Problem:
    params: list[np.ndarray]
    grads: list[list[np.ndarray]]


@st.composite
def problems(draw: st.DrawFn, dtype: type[np.floating[Any]], steps: int = STEPS) -> Problem:
    """Initial parameters and a gradient sequence, exactly representable in ``dtype``.

    Some tensors start at zero (as biases often do) and some gradients are
    exactly zero, so the zero-norm fallback is part of the trajectories.
    """
    weights = draw(st.lists(WEIGHT_SHAPES, min_size=1, max_size=3))
    shapes = [s for w in weights for s in (tuple(w), (w[0],))]
    starts_at_zero = draw(st.lists(st.booleans(), min_size=len(shapes), max_size=len(shapes)))
    param_scale = draw(log_uniform(1e-2, 1e2))
    grad_scale = draw(log_uniform(1e-3, 1e3))
    zero_grad_rate = draw(st.sampled_from([0.0, 0.1]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def sample(shape: tuple[int, ...], scale: float) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(dtype).astype(np.float64)

    params = [
        np.zeros(shape) if zero else sample(shape, param_scale)
        for shape, zero in zip(shapes, starts_at_zero, strict=True)
    ]
    grads = [
        [
            np.zeros(shape) if rng.random() < zero_grad_rate else sample(shape, grad_scale)
            for shape in shapes
        ]
        for _ in range(steps)
    ]
    return Problem(params, grads)


# -- running the front-ends ------------------------------------------------------------

Run = tuple[list[np.ndarray], dict[int, dict[str, Any]]]


def run_numpy(
    cls: type[anp.Optimizer], problem: Problem, dtype: type[np.floating[Any]], **hparams: Any
) -> Run:
    params = [p.astype(dtype) for p in problem.params]
    opt = cls(params, **hparams)
    for grads in problem.grads:
        opt.step([g.astype(dtype) for g in grads])
    return params, opt.state_dict()["state"]


def run_torch(
    cls: type[torch.optim.Optimizer],
    problem: Problem,
    dtype: type[np.floating[Any]],
    **hparams: Any,
) -> Run:
    params = [torch.from_numpy(p.astype(dtype)) for p in problem.params]
    opt = cls(params, **hparams)
    for grads in problem.grads:
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.from_numpy(g.astype(dtype))
        opt.step()
    state = {
        index: {key: value.numpy() for key, value in entries.items()}
        for index, entries in opt.state_dict()["state"].items()
    }
    return [p.numpy() for p in params], state


@dataclass(frozen=True)
class Expected:
    params: list[np.ndarray]
    state: dict[int, dict[str, Any]]
    #: The largest magnitude of every tensor along the trajectory, by (layer, "param" or key).
    scales: dict[tuple[int, str], float]


def run_reference(case: Case, problem: Problem, **hparams: Any) -> Expected:
    reference = case.reference(problem.params, **hparams)
    layers = range(len(problem.params))
    scales: dict[tuple[int, str], float] = {}
    for grads in problem.grads:
        reference.step(grads)
        for layer in layers:
            for key, value in (("param", reference.params[layer]), *reference.state(layer).items()):
                largest = float(np.max(np.abs(value)))
                scales[layer, key] = max(scales.get((layer, key), 0.0), largest)
    return Expected(reference.params, {i: reference.state(i) for i in layers}, scales)


def relative_error(actual: Any, expected: Any, scale: float) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    return float(np.max(np.abs(actual - expected))) / max(scale, np.finfo(np.float64).tiny)


def assert_matches(actual: Run, expected: Expected, rtol: float, label: str) -> None:
    params, state = actual
    for index, (p, ref) in enumerate(zip(params, expected.params, strict=True)):
        assert np.isfinite(ref).all(), "the reference trajectory must stay finite"
        error = relative_error(p, ref, expected.scales[index, "param"])
        assert error <= rtol, f"{label}: parameter {index}: relative error {error:.3g} > {rtol:g}"
    for index, ref_entries in expected.state.items():
        entries = state.get(index, {})
        assert set(entries) == set(ref_entries), f"{label}: state keys of parameter {index}"
        for key, ref in ref_entries.items():
            error = relative_error(entries[key], ref, expected.scales[index, key])
            assert error <= rtol, (
                f"{label}: state {key!r} of parameter {index}: relative error {error:.3g} > {rtol:g}"
            )


# -- the tests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "examples"), [(np.float64, 40), (np.float32, 15)], ids=["float64", "float32"]
)
@pytest.mark.parametrize("name", CASES)
def test_front_ends_follow_the_paper(
    name: str, dtype: type[np.floating[Any]], examples: int
) -> None:
    case = CASES[name]
    rtol = TOLERANCES[dtype]

    @settings(max_examples=examples)
    @given(problem=problems(dtype), hparams=case.hparams)
    def check(problem: Problem, hparams: dict[str, Any]) -> None:
        expected = run_reference(case, problem, **hparams)
        torch_run = run_torch(case.torch_class, problem, dtype, **hparams)
        numpy_run = run_numpy(case.numpy_class, problem, dtype, **hparams)
        assert_matches(torch_run, expected, rtol, f"adaptim.{case.torch_class.__name__}")
        assert_matches(numpy_run, expected, rtol, f"adaptim.numpy.{case.numpy_class.__name__}")

    check()


# -- the zero-norm fallback, explicitly -------------------------------------------------

FRONT_ENDS = ("torch", "numpy")


def one_step(
    name: str, front_end: str, param: np.ndarray, grad: np.ndarray, **hparams: Any
) -> tuple[np.ndarray, dict[str, Any]]:
    """One step on one 2-d parameter, in float64: the new parameter and its state."""
    case = CASES[name]
    problem = Problem([param], [[grad]])
    if front_end == "torch":
        (new_param,), state = run_torch(case.torch_class, problem, np.float64, **hparams)
    else:
        (new_param,), state = run_numpy(case.numpy_class, problem, np.float64, **hparams)
    return new_param, state[0]


RNG = np.random.default_rng(2017)
WEIGHT = RNG.standard_normal((3, 4))
GRAD = RNG.standard_normal((3, 4))
ZEROS = np.zeros((3, 4))


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("trust_clip", [False, True])
def test_lars_zero_weight_takes_the_plain_step(front_end: str, trust_clip: bool) -> None:
    # ||w|| = 0 would give a trust ratio of 0 and freeze the layer forever.
    param, state = one_step(
        "lars", front_end, ZEROS, GRAD, lr=0.5, weight_decay=0.01, trust_clip=trust_clip
    )
    np.testing.assert_array_equal(param, -0.5 * GRAD)
    np.testing.assert_array_equal(state["momentum_buffer"], 0.5 * GRAD)
    assert state["trust_ratio"] == 1.0


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_lars_zero_gradient_takes_the_plain_step(front_end: str, weight_decay: float) -> None:
    # ||g|| = 0: ratio 1, so only the weight decay moves the layer.
    param, state = one_step(
        "lars", front_end, WEIGHT, ZEROS, lr=0.5, momentum=0.0, weight_decay=weight_decay
    )
    np.testing.assert_allclose(param, WEIGHT - 0.5 * weight_decay * WEIGHT, rtol=1e-15)
    assert state["trust_ratio"] == 1.0


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("weight_norm_clip", [(0.0, 10.0), (0.5, 10.0), None])
def test_lamb_zero_weight_takes_the_adam_step(
    front_end: str, weight_norm_clip: tuple[float, float] | None
) -> None:
    # ||x|| = 0: ratio 1 even when phi(0) = low > 0; the first Adam step is g / (|g| + eps).
    param, state = one_step(
        "lamb", front_end, ZEROS, GRAD, lr=0.1, eps=1e-6, weight_norm_clip=weight_norm_clip
    )
    np.testing.assert_allclose(param, -0.1 * GRAD / (np.abs(GRAD) + 1e-6), rtol=1e-12)
    assert state["trust_ratio"] == 1.0


@pytest.mark.parametrize("front_end", FRONT_ENDS)
@pytest.mark.parametrize("param", [WEIGHT, ZEROS], ids=["weight", "zeros"])
def test_lamb_zero_gradient_leaves_the_layer_alone(front_end: str, param: np.ndarray) -> None:
    # ||u|| = 0 on the first step: a 0/0 trust ratio would turn the layer into NaN.
    new_param, state = one_step("lamb", front_end, param, ZEROS, lr=0.1)
    np.testing.assert_array_equal(new_param, param)
    for key in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(state[key], ZEROS)
    assert state["trust_ratio"] == 1.0
