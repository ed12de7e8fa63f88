"""The optax family (Lion, ...) against optax 0.2.8 with JAX, and Lion against Keras 3.

Each comparison runs adaptim and the reference for :data:`STEPS` steps on a
noisy quadratic whose gradient depends on the current parameters,

    g_t = s · (h ⊙ (θ_t − θ*) + ξ_t + o),

with curvature ``h``, target ``θ*`` and noise ``ξ_t`` fixed by the case's
seed, so a difference in one step feeds into the next gradient (fixed
gradient streams cannot show that). float64 must agree to 1e-10 relative,
float32 to 1e-4 (:func:`_flavors.relative_error`), on Hypothesis-drawn
hyperparameters, shapes, gradient scales and offsets. JAX runs on the CPU with
64-bit enabled, as in ``test_flavors_optax.py``; Keras on its torch backend.
"""

from __future__ import annotations

import importlib
import os
import re
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("KERAS_BACKEND", "torch")

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from _flavors import BETA1, BETA2, EPS, LR, WEIGHT_DECAY, relative_error
from _parity import Range
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import adaptim
import adaptim.numpy as anp
from adaptim.torch import _mkl_sqrt, _native_norms

# Test dependencies CI installs: missing ones must fail, not skip.
jax = importlib.import_module("jax")
optax = importlib.import_module("optax")
keras = importlib.import_module("keras")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

STEPS = 200
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-4}
SHAPES: tuple[tuple[int, ...], ...] = ((), (5,), (1,), (3, 4), (2, 3, 2))

Arrays = list[np.ndarray]

#: Each example costs about a second of XLA compilation: a failure is reported as drawn.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# -- the problem ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    hparams: dict[str, float]
    shapes: tuple[tuple[int, ...], ...]
    scale: float
    offset: float
    seed: int


@dataclass(frozen=True)
class Quadratic:
    """The noisy quadratic of a case: its start, and its gradient at step ``t``."""

    start: Arrays
    curvature: Arrays
    target: Arrays
    noise: list[Arrays]
    scale: float
    offset: float

    @classmethod
    def of(cls, case: Case) -> Quadratic:
        rng = np.random.default_rng(case.seed)
        return cls(
            start=[np.asarray(rng.standard_normal(s)) for s in case.shapes],
            curvature=[rng.uniform(0.1, 2.0, s) for s in case.shapes],
            target=[rng.standard_normal(s) for s in case.shapes],
            noise=[[rng.standard_normal(s) for s in case.shapes] for _ in range(STEPS)],
            scale=case.scale,
            offset=case.offset,
        )

    def gradient(self, t: int, params: Sequence[np.ndarray], dtype: type) -> Arrays:
        """In ``dtype`` from parameters of ``dtype``: both sides see the same arithmetic."""
        return [
            np.asarray(
                dtype(self.scale)
                * (
                    h.astype(dtype) * (np.asarray(p, dtype) - c.astype(dtype))
                    + (n + self.offset).astype(dtype)
                ),
                dtype,
            )
            for p, h, c, n in zip(params, self.curvature, self.target, self.noise[t], strict=True)
        ]


# -- the runs ------------------------------------------------------------------------------
def run_torch(name: str, kwargs: Mapping[str, Any], problem: Quadratic, dtype: type) -> Arrays:
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)  # float64 runs keep scalar state in float64
    try:
        params = [torch.tensor(p, dtype=torch_dtype, requires_grad=True) for p in problem.start]
        optimizer = adaptim.OPTIMIZERS[name](params, **kwargs)
        for t in range(STEPS):
            grads = problem.gradient(t, [p.detach().numpy() for p in params], dtype)
            for p, g in zip(params, grads, strict=True):
                p.grad = torch.from_numpy(g)
            optimizer.step()
        return [p.detach().numpy().copy() for p in params]
    finally:
        torch.set_default_dtype(previous)


def run_numpy(name: str, kwargs: Mapping[str, Any], problem: Quadratic, dtype: type) -> Arrays:
    params = [p.astype(dtype) for p in problem.start]
    optimizer = anp.OPTIMIZERS[name](params, **kwargs)
    for t in range(STEPS):
        optimizer.step(problem.gradient(t, params, dtype))
    return params


def run_optax(transformation: Any, problem: Quadratic, dtype: type) -> Arrays:
    params = [jnp.asarray(p, dtype=dtype) for p in problem.start]
    state = transformation.init(params)

    @jax.jit
    def step(grads: Any, state: Any, params: Any) -> Any:
        updates, state = transformation.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for t in range(STEPS):
        grads = problem.gradient(t, [np.asarray(p) for p in params], dtype)
        params, state = step([jnp.asarray(g) for g in grads], state, params)
    return [np.asarray(p) for p in params]


def run_keras(make: Callable[[], Any], problem: Quadratic, dtype: type) -> Arrays:
    previous = keras.config.floatx()
    keras.config.set_floatx(np.dtype(dtype).name)
    try:
        variables = [keras.Variable(p.astype(dtype)) for p in problem.start]
        optimizer = make()
        for t in range(STEPS):
            values = [keras.ops.convert_to_numpy(v.value) for v in variables]
            grads = problem.gradient(t, values, dtype)
            optimizer.apply_gradients(
                zip([torch.from_numpy(g) for g in grads], variables, strict=True)
            )
        return [keras.ops.convert_to_numpy(v.value).copy() for v in variables]
    finally:
        keras.config.set_floatx(previous)


# -- the algorithms ------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One algorithm in one flavor against one reference, with its drawn hyperparameters."""

    name: str
    optimizer: str
    space: Mapping[str, Range] = field(repr=False)
    #: The adaptim keyword arguments for drawn hyperparameters (``flavor`` included).
    ours: Callable[[Mapping[str, float]], dict[str, Any]] = field(repr=False)
    #: The reference's run for drawn hyperparameters.
    reference: Callable[[Mapping[str, float], Quadratic, type], Arrays] = field(repr=False)
    shapes: tuple[tuple[int, ...], ...] = SHAPES
    #: float64 only for the transcriptions of a paper.
    dtypes: tuple[type, ...] = (np.float64, np.float32)


def _betas(hp: Mapping[str, float]) -> tuple[float, float]:
    return (hp["beta1"], hp["beta2"])


LION_SPACE = {"lr": LR, "beta1": BETA1, "beta2": BETA2, "weight_decay": WEIGHT_DECAY}

VARIANTS = [
    Variant(
        "lion-optax",
        "lion",
        LION_SPACE,
        lambda hp: {"lr": hp["lr"], "betas": _betas(hp), "weight_decay": hp["weight_decay"]},
        lambda hp, problem, dtype: run_optax(
            optax.lion(hp["lr"], b1=hp["beta1"], b2=hp["beta2"], weight_decay=hp["weight_decay"]),
            problem,
            dtype,
        ),
    ),
    Variant(
        "lion-keras",
        "lion",
        # Keras refuses beta_1 = 0
        {**LION_SPACE, "beta1": Range(0.01, 0.99)},
        lambda hp: {
            "flavor": "keras",
            "lr": hp["lr"],
            "betas": _betas(hp),
            "weight_decay": hp["weight_decay"],
        },
        lambda hp, problem, dtype: run_keras(
            lambda: keras.optimizers.Lion(
                hp["lr"], beta_1=hp["beta1"], beta_2=hp["beta2"], weight_decay=hp["weight_decay"]
            ),
            problem,
            dtype,
        ),
    ),
]


def _paper_yogi(hp: Mapping[str, float], problem: Quadratic, dtype: type) -> Arrays:
    """Zaheer et al. 2018, Algorithm 2, transcribed: m_0 = v_0 = 0, no bias correction."""
    assert dtype == np.float64, "a transcription in float64 only"
    params = [p.copy() for p in problem.start]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t in range(STEPS):
        for i, g in enumerate(problem.gradient(t, params, dtype)):
            m[i] = hp["beta1"] * m[i] + (1 - hp["beta1"]) * g
            v[i] = v[i] - (1 - hp["beta2"]) * np.sign(v[i] - g * g) * g * g
            params[i] = params[i] - hp["lr"] * m[i] / (np.sqrt(v[i]) + hp["eps"])
    return params


def _optax_yogi(hp: Mapping[str, float], problem: Quadratic, dtype: type) -> Arrays:
    # optax.yogi with its initial_accumulator_value exposed (the alias keeps 1e-6)
    yogi = optax.chain(
        optax.scale_by_yogi(
            b1=hp["beta1"],
            b2=hp["beta2"],
            eps=hp["eps"],
            initial_accumulator_value=hp["initial_accumulator_value"],
        ),
        optax.scale_by_learning_rate(hp["lr"]),
    )
    return run_optax(yogi, problem, dtype)


def _adabelief(nesterov: bool) -> Callable[[Mapping[str, float], Quadratic, type], Arrays]:
    def reference(hp: Mapping[str, float], problem: Quadratic, dtype: type) -> Arrays:
        adabelief = optax.adabelief(
            hp["lr"],
            b1=hp["beta1"],
            b2=hp["beta2"],
            eps=hp.get("eps", 1e-8),  # the paper flavor's
            eps_root=hp.get("eps_root", 1e-8),
            nesterov=nesterov,
        )
        return run_optax(adabelief, problem, dtype)

    return reference


ADAM_SPACE = {"lr": LR, "beta1": BETA1, "beta2": BETA2}
TINY_EPS = Range(1e-16, 1e-6, "log")
# With beta1 -> 0, m_t = g_t and s_t = eps_root: AdaBelief's steps are lr·g/1e-8, and
# both sides overflow alike (a comparison of two Infs proves nothing).
BELIEF_SPACE = {**ADAM_SPACE, "beta1": Range(0.5, 0.99)}

VARIANTS += [
    Variant(
        "adabelief-optax",
        "adabelief",
        {**BELIEF_SPACE, "eps": TINY_EPS, "eps_root": TINY_EPS},
        lambda hp: {
            "lr": hp["lr"],
            "betas": _betas(hp),
            "eps": hp["eps"],
            "eps_root": hp["eps_root"],
        },
        _adabelief(nesterov=False),
    ),
    Variant(
        "adabelief-nesterov",
        "adabelief",
        {**BELIEF_SPACE, "eps": TINY_EPS, "eps_root": TINY_EPS},
        lambda hp: {
            "lr": hp["lr"],
            "betas": _betas(hp),
            "eps": hp["eps"],
            "eps_root": hp["eps_root"],
            "nesterov": True,
        },
        _adabelief(nesterov=True),
    ),
    Variant(
        "adabelief-paper",  # Algorithm 2 is optax's arithmetic with eps = eps_root = 1e-8
        "adabelief",
        BELIEF_SPACE,
        lambda hp: {"flavor": "paper", "lr": hp["lr"], "betas": _betas(hp)},
        _adabelief(nesterov=False),
    ),
    Variant(
        "yogi-optax",
        "yogi",
        {**ADAM_SPACE, "eps": EPS, "initial_accumulator_value": Range(1e-8, 1e-1, "log")},
        lambda hp: {
            "lr": hp["lr"],
            "betas": _betas(hp),
            "eps": hp["eps"],
            "initial_accumulator_value": hp["initial_accumulator_value"],
        },
        _optax_yogi,
    ),
    Variant(
        "yogi-paper",
        "yogi",
        {**ADAM_SPACE, "eps": EPS},
        lambda hp: {"flavor": "paper", "lr": hp["lr"], "betas": _betas(hp), "eps": hp["eps"]},
        _paper_yogi,
        dtypes=(np.float64,),
    ),
]


def _paper_adan(hp: Mapping[str, float], problem: Quadratic, dtype: type) -> Arrays:
    """Xie et al. 2022, Algorithm 1, transcribed in the paper's convention (its beta = 1 - ours)."""
    assert dtype == np.float64, "a transcription in float64 only"
    b1, b2, b3 = (1 - hp["beta1"], 1 - hp["beta2"], 1 - hp["beta3"])
    lr, eps, decay = hp["lr"], hp["eps"], hp["weight_decay"]
    params = [p.copy() for p in problem.start]
    m, v, n, previous = ([np.zeros_like(p) for p in params] for _ in range(4))
    for t in range(STEPS):
        for i, g in enumerate(problem.gradient(t, params, dtype)):
            if t == 0:  # m_0 = g_0, v_0 = 0, n_0 = g_0^2
                m[i], v[i], n[i] = g, np.zeros_like(g), g * g
            else:
                d = g - previous[i]
                m[i] = (1 - b1) * m[i] + b1 * g
                v[i] = d if t == 1 else (1 - b2) * v[i] + b2 * d  # v_1 = g_1 - g_0
                n[i] = (1 - b3) * n[i] + b3 * (g + (1 - b2) * d) ** 2
            eta = lr / (np.sqrt(n[i]) + eps)
            params[i] = (params[i] - eta * (m[i] + (1 - b2) * v[i])) / (1 + decay * lr)
            previous[i] = g
    return params


ADAN_SPACE = {
    "lr": LR,
    "beta1": Range(0.5, 0.99),
    "beta2": Range(0.5, 0.99),
    "beta3": Range(0.9, 0.999, "log1m"),
    "eps": EPS,
    "weight_decay": WEIGHT_DECAY,
}


def _adan_ours(hp: Mapping[str, float], **extra: Any) -> dict[str, Any]:
    return {
        "lr": hp["lr"],
        "betas": (hp["beta1"], hp["beta2"], hp["beta3"]),
        "eps": hp["eps"],
        "weight_decay": hp["weight_decay"],
        **extra,
    }


VARIANTS += [
    Variant(
        "adan-optax",
        "adan",
        {**ADAN_SPACE, "eps_root": Range(1e-10, 1e-6, "log")},
        lambda hp: _adan_ours(hp, eps_root=hp["eps_root"]),
        lambda hp, problem, dtype: run_optax(
            optax.adan(
                hp["lr"],
                b1=hp["beta1"],
                b2=hp["beta2"],
                b3=hp["beta3"],
                eps=hp["eps"],
                eps_root=hp["eps_root"],
                weight_decay=hp["weight_decay"],
            ),
            problem,
            dtype,
        ),
    ),
    Variant(
        "adan-paper",
        "adan",
        ADAN_SPACE,
        lambda hp: _adan_ours(hp, flavor="paper"),
        _paper_adan,
        dtypes=(np.float64,),
    ),
]


VARIANTS += [
    Variant(
        "novograd-optax",
        "novograd",
        {
            "lr": LR,
            "beta1": BETA1,
            "beta2": Range(0.1, 0.999, "log1m"),
            "eps": EPS,
            "eps_root": Range(1e-10, 1e-4, "log"),
            "weight_decay": WEIGHT_DECAY,
        },
        lambda hp: {
            "lr": hp["lr"],
            "betas": _betas(hp),
            "eps": hp["eps"],
            "eps_root": hp["eps_root"],
            "weight_decay": hp["weight_decay"],
        },
        lambda hp, problem, dtype: run_optax(
            optax.novograd(
                hp["lr"],
                b1=hp["beta1"],
                b2=hp["beta2"],
                eps=hp["eps"],
                eps_root=hp["eps_root"],
                weight_decay=hp["weight_decay"],
            ),
            problem,
            dtype,
        ),
    ),
]


def _paper_novograd(hp: Mapping[str, float], problem: Quadratic, dtype: type) -> Arrays:
    """Ginsburg et al. 2019, Algorithm 1, transcribed, per layer (tensor) l:
    v_1 = ||g_1||^2, m_1 = g_1/sqrt(v_1) + d·w_1; then v_t = β2·v_{t-1} + (1 - β2)·||g_t||^2,
    m_t = β1·m_{t-1} + (g_t/sqrt(v_t + ε) + d·w_t); w_{t+1} = w_t - λ·m_t."""
    assert dtype == np.float64, "a transcription in float64 only"
    beta1, beta2, decay = hp["beta1"], hp["beta2"], hp["weight_decay"]
    params = [p.copy() for p in problem.start]
    m = [np.zeros_like(p) for p in params]
    v = [0.0 for _ in params]
    for t in range(STEPS):
        for i, g in enumerate(problem.gradient(t, params, dtype)):
            norm_sq = float(np.sum(g * g))
            if t == 0:
                v[i] = norm_sq
                m[i] = g / np.sqrt(v[i]) + decay * params[i]
            else:
                v[i] = beta2 * v[i] + (1 - beta2) * norm_sq
                m[i] = beta1 * m[i] + (g / np.sqrt(v[i] + hp["eps"]) + decay * params[i])
            params[i] = params[i] - hp["lr"] * m[i]
    return params


VARIANTS += [
    Variant(
        "novograd-paper",
        "novograd",
        {
            "lr": LR,
            "beta1": BETA1,
            "beta2": Range(0.1, 0.999, "log1m"),
            "eps": Range(1e-10, 1e-4, "log"),
            "weight_decay": WEIGHT_DECAY,
        },
        lambda hp: {
            "flavor": "paper",
            "lr": hp["lr"],
            "betas": _betas(hp),
            "eps_root": hp["eps"],  # the paper's ε, under the root
            "weight_decay": hp["weight_decay"],
        },
        _paper_novograd,
        dtypes=(np.float64,),
    ),
]


def _optax_sm3(hp: Mapping[str, float], problem: Quadratic, dtype: type) -> Arrays:
    sm3 = optax.chain(
        optax.scale_by_sm3(b1=hp.get("momentum", 0.0), eps=hp.get("eps", 0.0)),
        optax.scale(-hp["lr"]),
    )  # optax.sm3 with eps exposed (its alias keeps 1e-8); the paper flavor's: 0, 0
    return run_optax(sm3, problem, dtype)


SM3_SHAPES = ((5,), (1,), (3, 4), (2, 3, 2), (4, 1))  # optax refuses 0-d parameters

VARIANTS += [
    Variant(
        "sm3-optax",
        "sm3",
        {"lr": LR, "momentum": Range(0.0, 0.95), "eps": EPS},
        lambda hp: dict(hp),
        _optax_sm3,
        shapes=SM3_SHAPES,
    ),
    Variant(
        "sm3-paper",
        "sm3",
        {"lr": LR},
        lambda hp: {"flavor": "paper", "lr": hp["lr"]},
        _optax_sm3,
        shapes=SM3_SHAPES,
    ),
]


def draw(data: st.DataObject, variant: Variant) -> Case:
    def value(r: Range, label: str) -> float:
        return data.draw(st.floats(0.0, 1.0).map(r.at), label=label)

    count = data.draw(st.integers(1, 3), label="count")
    return Case(
        hparams={name: value(r, name) for name, r in variant.space.items()},
        shapes=tuple(data.draw(st.sampled_from(variant.shapes)) for _ in range(count)),
        scale=value(Range(1e-2, 1e2, "log"), "scale"),
        offset=value(Range(0.0, 2.0), "offset"),
        seed=data.draw(st.integers(0, 2**31 - 1), label="seed"),
    )


def errors(variant: Variant, case: Case) -> dict[str, float]:
    """The worst relative error per front-end and dtype against the reference."""
    problem = Quadratic.of(case)
    kwargs = variant.ours(case.hparams)
    found = {}
    for dtype in variant.dtypes:
        theirs = variant.reference(case.hparams, problem, dtype)
        ours = run_torch(variant.optimizer, kwargs, problem, dtype)
        found[f"torch {dtype.__name__}"] = relative_error(ours, theirs, problem.start)
        if dtype == np.float64:
            ours = run_numpy(variant.optimizer, kwargs, problem, dtype)
            found["numpy float64"] = relative_error(ours, theirs, problem.start)
    return found


# Each takes 2-8 s (three XLA compilations per example): marked slow.
@pytest.mark.parametrize(
    "variant", [pytest.param(v, id=v.name, marks=pytest.mark.slow) for v in VARIANTS]
)
@settings(max_examples=3, deadline=None, phases=NO_SHRINK)
@given(data=st.data())
def test_matches_reference(variant: Variant, data: st.DataObject) -> None:
    case = draw(data, variant)
    for label, error in errors(variant, case).items():
        tolerance = TOLERANCE[np.float32 if "float32" in label else np.float64]
        assert error <= tolerance, f"{variant.name} {label}: {error:.3g} {case}"


# -- execution paths -------------------------------------------------------------------------
FAMILY = sorted({v.optimizer for v in VARIANTS})


def _train(name: str, steps: int, **switches: Any) -> tuple[list[torch.Tensor], Any]:
    """A tiny MLP (biases, matrices) trained on fixed data; returns its parameters and optimizer."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer = adaptim.OPTIMIZERS[name](model.parameters(), lr=1e-2, **switches)
    x, y = torch.randn(32, 6), torch.randn(32, 1)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()], optimizer


@pytest.mark.parametrize("name", FAMILY)
def test_engine_paths_match_the_reference_path(name: str) -> None:
    """The default step equals ``foreach=False`` bit for bit (on this small model the exact
    native loop where it gives torch's bits, else the replay); ``fused=True`` agrees."""
    reference, _ = _train(name, 30, foreach=False)
    default, optimizer = _train(name, 30)
    rooted = name != "lion"  # (SM3's matrices: the replay)
    # (NovoGrad's norms: summed in torch's order where that order holds, else the replay)
    exact = (not rooted or _mkl_sqrt.emulated(torch.float32)) and (
        name != "novograd" or _native_norms.holds(torch.float32)
    )
    expected = {True: "native (", False: "foreach ("}[exact]
    assert expected in optimizer.fused_status()[0], optimizer.fused_status()
    for ours, theirs in zip(default, reference, strict=True):
        assert torch.equal(ours, theirs)
    native, optimizer = _train(name, 30, fused=True)
    # (SM3's matrices have no native form: they replay, its vectors run native)
    assert "native (" in optimizer.fused_status()[0], optimizer.fused_status()
    for ours, theirs in zip(native, reference, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


# -- validation and the differences the flavors document --------------------------------------
@pytest.mark.parametrize(
    ("betas", "pieces"),
    [
        ((0.9, 0.9), ("Invalid betas", "(0.9, 0.9)", "triple")),
        ((0.9, 1.0, 0.9), ("Invalid beta2", "1.0", "0 <= beta2 < 1")),
        ((0.9, 0.9, -0.1), ("Invalid beta3", "-0.1", "0 <= beta3 < 1")),
    ],
)
def test_adan_refuses_bad_betas(betas: tuple[float, ...], pieces: tuple[str, ...]) -> None:
    pattern = ".*".join(map(re.escape, pieces))
    with pytest.raises(ValueError, match=pattern):
        adaptim.Adan([torch.zeros(2, requires_grad=True)], betas=betas)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=pattern):
        anp.Adan([np.zeros(2)], betas=betas)


def test_flavors_that_do_not_exist_are_refused() -> None:
    with pytest.raises(
        ValueError, match=r"adaptim has no PyTorch flavor of Yogi\. Allowed: 'optax', 'paper'"
    ):
        adaptim.Yogi([torch.zeros(2, requires_grad=True)], flavor="torch")
    with pytest.raises(ValueError, match="adaptim has no Keras 3 flavor of Adan"):
        anp.Adan([np.zeros(2)], flavor="keras")


@pytest.mark.parametrize(
    ("name", "flavor", "reference", "scale"),
    [
        ("yogi-paper", "optax", "paper", 1.0),
        ("adan-paper", "optax", "paper", 1.0),
        # NovoGrad's flavors differ in where ε goes and whether the first step has one: it
        # shows where ||g||^2 is not far above ε
        ("novograd-paper", "optax", "paper", 1e-5),
    ],
)
def test_the_comparison_can_fail(name: str, flavor: str, reference: str, scale: float) -> None:
    """optax's flavor misses the paper's transcription by far more than any tolerance."""
    variant = next(v for v in VARIANTS if v.name == name)
    case = Case({k: r.at(0.5) for k, r in variant.space.items()}, ((3, 4),), scale, 0.5, 7)
    problem = Quadratic.of(case)
    theirs = variant.reference(case.hparams, problem, np.float64)
    kwargs = {**variant.ours(case.hparams), "flavor": reference}
    assert (
        relative_error(
            run_torch(name.split("-")[0], kwargs, problem, np.float64), theirs, problem.start
        )
        < 1e-10
    )
    kwargs["flavor"] = flavor
    assert (
        relative_error(
            run_torch(name.split("-")[0], kwargs, problem, np.float64), theirs, problem.start
        )
        > 1e-3
    )


def test_sm3_keeps_rows_and_columns_and_takes_the_replay_quietly() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cannot be recorded" warning
        params, optimizer = _train("sm3", 5)
    weight, bias = params[0], params[1]
    state = optimizer.state_dict()["state"]
    assert state[0]["accumulator"].shape == (sum(weight.shape),)  # 8 rows + 6 columns
    assert state[1]["accumulator"].shape == bias.shape  # vectors: one per element
    assert "step" not in state[0]
    # matrices replay and vectors take the exact native loop where MKL's root is emulated
    # (else they replay too), as two partitions (tests/test_factored_fast.py)
    vectors = "native (1 partition)" if _mkl_sqrt.emulated(torch.float32) else "foreach"
    expected = (
        f"foreach (1 partition), {vectors}" if "native" in vectors else "foreach (2 partitions)"
    )
    assert optimizer.fused_status() == [f"{expected}: 4 of 4 tensors"]
    broken = optimizer.state_dict()
    broken["state"][0]["accumulator"] = torch.zeros(weight.numel())
    with pytest.raises(ValueError, match=r"'accumulator' has shape \(48,\); expected \(14,\)"):
        optimizer.load_state_dict(broken)
    with pytest.raises(TypeError, match="SM3 does not support complex parameters"):
        p = torch.zeros(2, 2, dtype=torch.complex64, requires_grad=True)
        p.grad = torch.ones_like(p)
        adaptim.SM3([p]).step()
