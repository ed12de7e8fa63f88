"""The NumPy front-end: parity with the torch front-end, state_dict, groups, errors.

Both front-ends drive the same update rules, so on the same parameters and
gradients they must agree to rounding (float64 within 1e-12, float32 within
1e-5), in the parameters and in every state entry. Errors are relative per
tensor, to the largest magnitude the tensor reached during the run:
``max|numpy - torch| / max_t max|torch_t|``, so that a parameter which ends
near zero does not turn float32 rounding into a large "relative" error.
"""

from __future__ import annotations

import copy
import inspect
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim
import adaptim.numpy as anp
from adaptim.torch._base import implicit_options

NAMES = tuple(anp.OPTIMIZERS)

TOLERANCES = {np.float64: 1e-12, np.float32: 1e-5, np.complex128: 1e-12}


def log_uniform(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(np.log10(low), np.log10(high)).map(lambda e: float(10.0**e))


def maybe_zero(strategy: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    return st.just(0.0) | strategy


LR = log_uniform(1e-4, 1e-1)
EPS = log_uniform(1e-10, 1e-4)
WEIGHT_DECAY = maybe_zero(log_uniform(1e-5, 1e-1))
BETAS = st.tuples(st.floats(0.0, 0.99), st.floats(0.5, 0.9999))
ADAM_LIKE = {"lr": LR, "betas": BETAS, "eps": EPS, "weight_decay": WEIGHT_DECAY}

# The non-boolean hyperparameters of every algorithm; the boolean ones are enumerated.
CONTINUOUS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "sgd": {
        "lr": LR,
        "momentum": maybe_zero(st.floats(0.0, 0.95)),
        "dampening": st.floats(0.0, 1.0),
        "weight_decay": WEIGHT_DECAY,
    },
    "adagrad": {
        "lr": LR,
        "lr_decay": maybe_zero(log_uniform(1e-4, 1e-1)),
        "weight_decay": WEIGHT_DECAY,
        "initial_accumulator_value": maybe_zero(st.floats(0.0, 1.0)),
        "eps": EPS,
    },
    "rmsprop": {
        "lr": LR,
        "alpha": st.floats(0.5, 0.999),
        "eps": EPS,
        "weight_decay": WEIGHT_DECAY,
        "momentum": maybe_zero(st.floats(0.0, 0.9)),
    },
    "adadelta": {
        "lr": log_uniform(1e-2, 1.0),
        "rho": st.floats(0.5, 0.99),
        "eps": log_uniform(1e-8, 1e-4),
        "weight_decay": WEIGHT_DECAY,
    },
    "adam": ADAM_LIKE,
    "adamw": ADAM_LIKE,
    "adamax": ADAM_LIKE,
    "nadam": {**ADAM_LIKE, "momentum_decay": st.floats(0.0, 0.01)},
    "radam": ADAM_LIKE,
    "lars": {
        "lr": log_uniform(1e-2, 2.0),
        "momentum": maybe_zero(st.floats(0.0, 0.95)),
        "weight_decay": WEIGHT_DECAY,
        "trust_coefficient": log_uniform(1e-4, 1e-2),
        "eps": maybe_zero(EPS),
    },
    "lamb": {
        **ADAM_LIKE,
        "weight_norm_clip": st.none() | st.tuples(st.floats(0.0, 1.0), st.floats(1.0, 20.0)),
    },
}
# the optax family (issue 16 point 2)
CONTINUOUS.update(
    {
        "lion": {"lr": LR, "betas": BETAS, "weight_decay": WEIGHT_DECAY},
        # β1 ≥ 0.1: with β1 = 0 the belief (g − m)² is 0 and every step is g/ε (×1e4 a step
        # at ε = 1e-4), which turns float32's last bit into 1e-4 after 100 steps whatever
        # the implementation; the optax parity tests take β1 from the whole range.
        "adabelief": {
            "lr": LR,
            "betas": st.tuples(st.floats(0.1, 0.99), st.floats(0.5, 0.9999)),
            "eps": EPS,
            "eps_root": maybe_zero(EPS),
        },
        "yogi": {
            "lr": LR,
            "betas": BETAS,
            "eps": EPS,
            "initial_accumulator_value": maybe_zero(st.floats(0.0, 1.0)),
        },
        "adan": {
            "lr": LR,
            "betas": st.tuples(st.floats(0.0, 0.99), st.floats(0.0, 0.99), st.floats(0.5, 0.9999)),
            "eps": EPS,
            "eps_root": maybe_zero(EPS),
            "weight_decay": WEIGHT_DECAY,
            "diff_scale": st.sampled_from(["one_minus_beta2", "beta2"]),
        },
        "novograd": {
            "lr": LR,
            "betas": BETAS,
            "eps": EPS,
            "eps_root": maybe_zero(EPS),
            "weight_decay": WEIGHT_DECAY,
        },
        "sm3": {"lr": LR, "momentum": maybe_zero(st.floats(0.0, 0.95)), "eps": maybe_zero(EPS)},
    }
)

# -- issue 16 (twins): torch.optim's other algorithms
CONTINUOUS.update(
    {
        "rprop": {
            "lr": LR,
            "etas": st.tuples(st.floats(0.1, 0.95), st.floats(1.05, 3.0)),
            "step_sizes": st.tuples(log_uniform(1e-8, 1e-3), log_uniform(1e-2, 100.0)),
        },
        "asgd": {
            "lr": LR,
            "lambd": log_uniform(1e-5, 1e-1),
            "alpha": st.floats(0.25, 1.0),
            "t0": st.floats(0.0, 300.0),
            "weight_decay": WEIGHT_DECAY,
        },
        "adafactor": {
            "lr": LR,
            "beta2_decay": st.floats(-1.0, -0.3),
            "eps": st.tuples(st.none() | log_uniform(1e-30, 1e-3), log_uniform(1e-4, 1e-2)),
            "d": st.floats(1.0, 4.0),
            "weight_decay": WEIGHT_DECAY,
        },
    }
)

# Nesterov momentum needs momentum > 0 and no dampening.
WHEN_ON = {("sgd", "nesterov"): {"momentum": st.floats(0.05, 0.95), "dampening": st.just(0.0)}}


# The options where frameworks differ; tests/test_flavors_options.py checks that
# both front-ends agree on them.
FLAVOR_OPTIONS: dict[str, set[str]] = {
    "adagrad": {"eps_inside_sqrt", "decoupled_weight_decay"},
    "rmsprop": {
        "eps_inside_sqrt",
        "lr_in_momentum",
        "initial_accumulator_value",
        "decoupled_weight_decay",
    },
    "adadelta": {"decoupled_weight_decay"},
    "adam": {"epsilon_hat", "amsgrad_max", "bias_correction"},
    "adamw": {"epsilon_hat", "amsgrad_max", "bias_correction"},
    "adamax": {"eps_in_max", "decoupled_weight_decay"},
    "nadam": {"momentum_schedule"},
    "radam": {"epsilon_hat", "rectify_threshold"},
}


def boolean_options(name: str) -> list[str]:
    """The boolean hyperparameters that both front-ends take, and ``maximize``."""
    accepted = inspect.signature(adaptim.OPTIMIZERS[name]).parameters
    flags = anp.OPTIMIZERS[name].algorithm.defaults
    skipped = FLAVOR_OPTIONS.get(name, set())
    return [
        k for k, v in flags.items() if isinstance(v, bool) and k in accepted and k not in skipped
    ] + ["maximize"]


def hparams(name: str, flags: dict[str, bool]) -> st.SearchStrategy[dict[str, Any]]:
    strategies = dict(CONTINUOUS[name])
    for flag, on in flags.items():
        if on:
            strategies.update(WHEN_ON.get((name, flag), {}))
    return st.fixed_dictionaries(strategies).map(lambda drawn: {**drawn, **flags})


def any_hparams(name: str) -> st.SearchStrategy[dict[str, Any]]:
    """Hyperparameters with the boolean options drawn too."""
    flags = st.fixed_dictionaries({flag: st.booleans() for flag in boolean_options(name)})
    return flags.flatmap(lambda drawn: hparams(name, drawn))


FLAG_CASES = [
    pytest.param(name, flags, id=f"{name}[{','.join(k for k, on in flags.items() if on)}]")
    for name in NAMES
    for flags in (
        dict(zip(boolean_options(name), values, strict=True))
        for values in itertools.product([False, True], repeat=len(boolean_options(name)))
    )
]


def test_every_hyperparameter_is_drawn() -> None:
    for name in NAMES:
        algorithm = anp.OPTIMIZERS[name].algorithm
        covered = set(CONTINUOUS[name]) | set(boolean_options(name))
        fixed = {"decoupled_weight_decay"} if name == "adamw" else set()
        fixed |= FLAVOR_OPTIONS.get(name, set())
        assert covered | fixed == {*algorithm.hparams, "maximize"}, name


# -- problems and runs -----------------------------------------------------------------

# 1-d biases, 2-d and 4-d weights, and (real parameters only) a 0-d scale.
ARRAY_SHAPES = [(5,), (1,), (3, 4), (1, 7), (2, 3, 2, 2)]
SHAPES = st.lists(st.sampled_from([(), *ARRAY_SHAPES]), min_size=2, max_size=5)
COMPLEX_SHAPES = st.lists(st.sampled_from(ARRAY_SHAPES), min_size=2, max_size=5)


@dataclass(frozen=True)
class Problem:
    """Parameters in two groups with their own hyperparameters, and the gradients.

    A gradient of ``None`` leaves its parameter alone for that step.
    """

    params: list[np.ndarray]
    grads: list[list[np.ndarray | None]]
    hparams: tuple[dict[str, Any], dict[str, Any]]
    split: int

    def groups(self, params: list[Any]) -> list[dict[str, Any]]:
        first, second = self.hparams
        return [
            {"params": params[: self.split], **first},
            {"params": params[self.split :], **second},
        ]


@st.composite
def problems(
    draw: st.DrawFn,
    name: str,
    flags: dict[str, bool],
    steps: int,
    shapes: st.SearchStrategy[list[tuple[int, ...]]] = SHAPES,
) -> Problem:
    group_hparams = (draw(hparams(name, flags)), draw(hparams(name, flags)))
    shapes = draw(shapes)
    split = draw(st.integers(1, len(shapes) - 1))
    missing_rate = draw(st.sampled_from([0.0, 0.2]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    params = [rng.standard_normal(shape) for shape in shapes]
    grads = [
        [None if rng.random() < missing_rate else rng.standard_normal(s) for s in shapes]
        for _ in range(steps)
    ]
    return Problem(params, grads, group_hparams, split)


def as_dtype(array: np.ndarray | None, dtype: type) -> np.ndarray | None:
    if array is None:
        return None
    if np.issubdtype(dtype, np.complexfloating):
        # Complex values from real ones: the real parts as drawn, the imaginary parts reversed.
        return np.asarray(array + 1j * np.flip(array), dtype=dtype)
    return array.astype(dtype)


def run_numpy(name: str, problem: Problem, dtype: type) -> tuple[list[np.ndarray], dict]:
    params = [as_dtype(p, dtype) for p in problem.params]
    opt = anp.OPTIMIZERS[name](problem.groups(params))
    for grads in problem.grads:
        opt.step([as_dtype(g, dtype) for g in grads])
    return params, opt.state_dict()


def run_torch(
    name: str, problem: Problem, dtype: type
) -> tuple[list[np.ndarray], dict, dict[tuple[int, str], float]]:
    """The final parameters, the state_dict, and the largest magnitude of every tensor."""
    params = [torch.from_numpy(as_dtype(p, dtype)) for p in problem.params]
    opt = adaptim.OPTIMIZERS[name](problem.groups(params))
    scales: dict[tuple[int, str], float] = {}

    def track_scales() -> None:
        for index, p in enumerate(params):
            for key, value in (("param", p), *opt.state.get(p, {}).items()):
                largest = float(value.abs().max())
                scales[index, key] = max(scales.get((index, key), 0.0), largest)

    track_scales()
    for grads in problem.grads:
        for p, g in zip(params, grads, strict=True):
            p.grad = None if g is None else torch.from_numpy(as_dtype(g, dtype))
        opt.step()
        track_scales()
    return [p.numpy() for p in params], opt.state_dict(), scales


def relative_error(actual: np.ndarray, expected: np.ndarray, scale: float) -> float:
    return float(np.max(np.abs(actual - expected))) / max(scale, np.finfo(np.float64).tiny)


def assert_close(actual: Any, expected: Any, scale: float, rtol: float, label: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, label
    assert actual.dtype == expected.dtype, f"{label}: dtype {actual.dtype} != {expected.dtype}"
    assert np.isfinite(expected).all(), f"{label}: the trajectory must stay finite"
    error = relative_error(actual, expected, scale)
    assert error <= rtol, f"{label}: relative error {error:.3g} > {rtol:g}"


def assert_same_run(numpy_run: Any, torch_run: Any, rtol: float, name: str) -> None:
    (params, numpy_sd), (torch_params, torch_sd, scales) = numpy_run, torch_run
    # The torch front-end leaves adaptim-only options at torch's values implicit.
    implicit = implicit_options(adaptim.OPTIMIZERS[name])
    for index, (p, q) in enumerate(zip(params, torch_params, strict=True)):
        assert_close(p, q, scales[index, "param"], rtol, f"parameter {index}")
    assert numpy_sd["state"].keys() == torch_sd["state"].keys()
    for index, torch_entries in torch_sd["state"].items():
        entries = numpy_sd["state"][index]
        assert entries.keys() == torch_entries.keys(), f"state keys of parameter {index}"
        for key, value in torch_entries.items():
            label = f"state {key!r} of parameter {index}"
            assert_close(entries[key], value.numpy(), scales[index, key], rtol, label)
    for group, torch_group in zip(numpy_sd["param_groups"], torch_sd["param_groups"], strict=True):
        assert group == {k: torch_group.get(k, implicit.get(k)) for k in group}


# -- (a) parity with the torch front-end -------------------------------------------------


@pytest.mark.parametrize(("name", "flags"), FLAG_CASES)
def test_numpy_matches_torch(name: str, flags: dict[str, bool]) -> None:
    @settings(max_examples=6)
    @given(problem=problems(name, flags, steps=100))
    def check(problem: Problem) -> None:
        for dtype in (np.float64, np.float32):
            numpy_run = run_numpy(name, problem, dtype)
            assert_same_run(numpy_run, run_torch(name, problem, dtype), TOLERANCES[dtype], name)

    check()


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam", "lamb"])
def test_numpy_matches_torch_on_complex_parameters(name: str) -> None:
    problem_strategy = st.fixed_dictionaries(
        {flag: st.booleans() for flag in boolean_options(name)}
    ).flatmap(lambda flags: problems(name, flags, steps=100, shapes=COMPLEX_SHAPES))

    @settings(max_examples=12)
    @given(problem=problem_strategy)
    def check(problem: Problem) -> None:
        numpy_run = run_numpy(name, problem, np.complex128)
        rtol = TOLERANCES[np.complex128]
        assert_same_run(numpy_run, run_torch(name, problem, np.complex128), rtol, name)

    check()


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam", "lamb"])
def test_complex_scalar_parameter(name: str) -> None:
    # torch.view_as_real turns a 0-d complex tensor into a pair; NumPy must do the same.
    problem = Problem(
        params=[np.array(0.5), np.ones(2)],
        grads=[[np.array(0.25), np.ones(2)], [np.array(-1.0), np.ones(2)]],
        hparams=({"lr": 0.1}, {"lr": 0.1}),
        split=1,
    )
    numpy_run = run_numpy(name, problem, np.complex128)
    rtol = TOLERANCES[np.complex128]
    assert_same_run(numpy_run, run_torch(name, problem, np.complex128), rtol, name)


# -- (b) state_dict round trip -------------------------------------------------------------


def assert_identical(actual: Any, expected: Any) -> None:
    """Bit-identical nested structures of arrays, dicts, lists and scalars."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            assert_identical(actual[key], expected[key])
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_identical(a, e)
    elif isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray)
        assert actual.dtype == expected.dtype
        np.testing.assert_array_equal(actual, expected, strict=True)
    else:
        assert actual == expected


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=15)
@given(data=st.data())
def test_state_dict_round_trip_is_bit_identical(name: str, data: st.DataObject) -> None:
    steps = 30
    saved_after = data.draw(st.integers(0, steps), label="saved_after")
    flags = data.draw(st.fixed_dictionaries({f: st.booleans() for f in boolean_options(name)}))
    problem = data.draw(problems(name, flags, steps))
    cls = anp.OPTIMIZERS[name]

    params = [p.copy() for p in problem.params]
    opt = cls(problem.groups(params))
    for grads in problem.grads[:saved_after]:
        opt.step(grads)
    saved = opt.state_dict()
    saved_copy = copy.deepcopy(saved)
    resumed_params = [p.copy() for p in params]
    for grads in problem.grads[saved_after:]:
        opt.step(grads)
    assert_identical(saved, saved_copy)  # a deep copy: later steps leave it alone

    # A fresh optimizer with default hyperparameters: the state_dict restores the groups.
    resumed = cls([{"params": group["params"]} for group in problem.groups(resumed_params)])
    resumed.load_state_dict(saved)
    for grads in problem.grads[saved_after:]:
        resumed.step(grads)
    assert_identical(resumed_params, params)
    assert_identical(resumed.state_dict(), opt.state_dict())


def test_state_dict_does_not_share_hyperparameters() -> None:
    opt = anp.Adam([np.zeros(2)], lr=0.1, betas=(0.8, 0.9))
    saved = opt.state_dict()
    saved["param_groups"][0]["lr"] = 1.0
    assert opt.param_groups[0]["lr"] == 0.1
    opt.load_state_dict(saved)
    saved["param_groups"][0]["lr"] = 2.0
    assert opt.param_groups[0]["lr"] == 1.0


# -- (c) groups, None gradients, maximize, non-finite gradients ---------------------------

RNG = np.random.default_rng(7)
SHAPES_2 = [(2, 3), (3,)]


def fresh_params(dtype: type = np.float64) -> list[np.ndarray]:
    return [np.arange(np.prod(s), dtype=dtype).reshape(s) / 7 - 0.3 for s in SHAPES_2]


def gradient_steps(count: int) -> list[list[np.ndarray]]:
    return [[RNG.standard_normal(s) for s in SHAPES_2] for _ in range(count)]


GRADS = gradient_steps(5)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=5)
@given(data=st.data())
def test_groups_equal_separate_optimizers(name: str, data: st.DataObject) -> None:
    first = data.draw(any_hparams(name))
    second = {**data.draw(any_hparams(name)), "lr": first["lr"] / 3}  # surely different
    cls = anp.OPTIMIZERS[name]
    grouped = fresh_params()
    opt = cls([{"params": [grouped[0]], **first}, {"params": [grouped[1]], **second}])
    alone = fresh_params()
    separate = [cls([alone[0]], **first), cls([alone[1]], **second)]
    for grads in GRADS:
        opt.step(grads)
        for single, g in zip(separate, grads, strict=True):
            single.step([g])
    assert_identical(grouped, alone)
    for index, single in enumerate(separate):
        assert_identical(opt.state_dict()["state"].get(index), single.state_dict()["state"].get(0))


@pytest.mark.parametrize("name", NAMES)
def test_none_gradient_leaves_parameter_and_state_alone(name: str) -> None:
    cls = anp.OPTIMIZERS[name]
    params = fresh_params()
    opt = cls(params)
    before = copy.deepcopy(opt.state_dict()["state"].get(1))
    for grads in GRADS:
        opt.step([grads[0], None])
    assert_identical(params[1], fresh_params()[1])
    assert_identical(opt.state_dict()["state"].get(1), before)
    only_first = fresh_params()
    alone = cls([only_first[0]])
    for grads in GRADS:
        alone.step([grads[0]])
    assert_identical(params[0], only_first[0])


def test_stateless_sgd_keeps_no_state_entries() -> None:
    # torch.optim.SGD and adaptim.SGD keep no entry for a parameter without state.
    params = fresh_params()
    opt = anp.SGD(params, lr=0.1)
    opt.step(GRADS[0])
    assert opt.state_dict()["state"] == {}


@pytest.mark.parametrize("name", NAMES)
def test_maximize_is_minimize_of_the_negated_gradient(name: str) -> None:
    cls = anp.OPTIMIZERS[name]
    ascending, descending = fresh_params(), fresh_params()
    up, down = cls(ascending, maximize=True), cls(descending)
    for grads in GRADS:
        up.step(grads)
        down.step([-g for g in grads])
    assert_identical(ascending, descending)


def test_maximize_ascends() -> None:
    (param,) = params = [np.zeros(3)]
    anp.SGD(params, lr=0.5, maximize=True).step([np.array([1.0, -2.0, 0.0])])
    np.testing.assert_array_equal(param, [0.5, -1.0, 0.0])


BAD_GRADS = [np.ones((2, 3)), np.array([0.0, np.inf, np.nan])]


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_skip_skips_the_whole_step(name: str) -> None:
    cls = anp.OPTIMIZERS[name]
    params, clean_params = fresh_params(), fresh_params()
    opt, clean = cls(params, nonfinite="skip"), cls(clean_params)
    opt.step(GRADS[0])
    clean.step(GRADS[0])
    snapshot = copy.deepcopy((params, opt.state_dict()))
    opt.step(BAD_GRADS)
    assert opt.skipped_steps == 1
    assert_identical((params, opt.state_dict()), snapshot)
    for grads in GRADS[1:]:
        opt.step(grads)
        clean.step(grads)
    assert opt.skipped_steps == 1
    assert_identical(params, clean_params)
    assert_identical(opt.state_dict()["state"], clean.state_dict()["state"])


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_raise_names_the_parameter(name: str) -> None:
    params = fresh_params()
    opt = anp.OPTIMIZERS[name](params, nonfinite="raise")
    snapshot = copy.deepcopy((params, opt.state_dict()))
    with pytest.raises(FloatingPointError, match=r"parameter 1 \(shape \(3,\)\)"):
        opt.step(BAD_GRADS)
    assert_identical((params, opt.state_dict()), snapshot)  # nothing updated, not even param 0


def test_nonfinite_ignore_lets_the_values_through() -> None:
    params = fresh_params()
    opt = anp.SGD(params, lr=0.1)  # nonfinite="ignore" is the default
    opt.step(BAD_GRADS)
    assert opt.skipped_steps == 0
    np.testing.assert_array_equal(params[0], fresh_params()[0] - 0.1)
    assert np.isfinite(params[1][0])
    assert np.isinf(params[1][1])
    assert np.isnan(params[1][2])


# -- (d) errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: anp.Adam([]), ValueError, "empty parameter list"),
        (lambda: anp.Adam([{"params": []}]), ValueError, "needs a non-empty 'params' list"),
        (lambda: anp.Adam([[1.0, 2.0]]), TypeError, "params must be numpy arrays, got list"),
        # An array is not a list of parameters (a matrix was taken as its rows, silently).
        (
            lambda: anp.Adam(np.zeros((2, 3))),
            TypeError,
            r"params must be a list of arrays or of param group dicts, got an array of "
            r"shape \(2, 3\): pass \[array\]",
        ),
        (lambda: anp.Adam(np.zeros(3)), TypeError, r"got an array of shape \(3,\)"),
        (
            lambda: anp.Adam([np.arange(3)]),
            TypeError,
            "params must be floating-point or complex arrays, got dtype int64",
        ),
        (
            lambda: anp.Adam([np.zeros(3)], lrr=0.1),
            TypeError,
            r"Adam got an unknown hyperparameter 'lrr'\. Did you mean 'lr'\?",
        ),
        (
            lambda: anp.SGD([{"params": [np.zeros(3)], "momentun": 0.9}]),
            TypeError,
            r"unknown hyperparameter 'momentun'\. Did you mean 'momentum'\?",
        ),
        (
            lambda: anp.LAMB([np.zeros(3)], bias_corection=False),
            TypeError,
            "Did you mean 'bias_correction'",
        ),
        (lambda: anp.Adam([np.zeros(3)], lr=-1.0), ValueError, r"Invalid lr: -1\.0"),
        (lambda: anp.Adam([np.zeros(3)], nonfinite="warn"), ValueError, "Invalid nonfinite"),
    ],
    ids=[
        "empty",
        "empty-group",
        "list",
        "matrix-not-list",
        "vector-not-list",
        "int64",
        "unknown",
        "unknown-in-group",
        "unknown-lamb",
        "negative-lr",
        "nonfinite-policy",
    ],
)
def test_construction_errors(make: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_unknown_hyperparameter_without_close_match_lists_the_allowed_ones() -> None:
    with pytest.raises(TypeError, match="unknown hyperparameter 'banana'") as info:
        anp.RMSprop([np.zeros(3)], banana=1)
    assert "Did you mean" not in str(info.value)
    assert (
        "Allowed: lr, alpha, eps, weight_decay, momentum, centered, eps_inside_sqrt, "
        "lr_in_momentum, initial_accumulator_value, decoupled_weight_decay, maximize, flavor."
    ) in str(info.value)


def test_step_errors() -> None:
    opt = anp.Adam(fresh_params())
    with pytest.raises(ValueError, match=r"step\(\) got 1 gradients for 2 parameters"):
        opt.step([np.zeros((2, 3))])
    with pytest.raises(
        ValueError, match=r"gradient 1 has shape \(2, 3\), but its parameter has shape \(3,\)"
    ):
        opt.step([np.zeros((2, 3)), np.zeros((2, 3))])


def test_load_state_dict_errors() -> None:
    a, b = fresh_params()
    two_groups = anp.Adam([{"params": [a]}, {"params": [b]}]).state_dict()
    with pytest.raises(ValueError, match="it has 2 param groups; this optimizer has 1"):
        anp.Adam([a, b]).load_state_dict(two_groups)
    with pytest.raises(
        ValueError, match=r"param_groups\[0\]: it has 1 parameters; this optimizer's group has 2"
    ):
        anp.Adam([{"params": [a, b]}, {"params": [np.zeros(1)]}]).load_state_dict(two_groups)
    opt = anp.Adam([a.copy(), b.copy()])
    opt.step(GRADS[0])
    with pytest.raises(ValueError, match=r"parameter 0 .*'exp_avg' has shape \(2, 3\)"):
        anp.Adam([b.copy(), a.copy()]).load_state_dict(opt.state_dict())


@pytest.mark.parametrize("name", sorted(adaptim.OPTIMIZERS))
def test_a_complex_or_non_numeric_gradient_of_a_real_parameter_is_refused(name: str) -> None:
    # NumPy's astype would drop the imaginary part with only a ComplexWarning.
    cls = getattr(anp, adaptim.OPTIMIZERS[name].__name__)
    params = fresh_params()
    before = [p.copy() for p in params]
    opt = cls(params, lr=0.1)
    good = np.ones((2, 3))
    with pytest.raises(TypeError, match=r"gradient 1 has dtype complex128, but its parameter has"):
        opt.step([good, np.ones(3) * 1j])
    with pytest.raises(TypeError, match=r"gradient 1 has dtype <U1, .*allowed: a real"):
        opt.step([good, np.array(["a", "b", "c"])])
    for p, b in zip(params, before, strict=True):
        np.testing.assert_array_equal(p, b)  # refused before anything moved


def test_a_complex_gradient_of_a_complex_parameter_is_taken() -> None:
    p = np.zeros(3, dtype=np.complex128)
    anp.SGD([p], lr=0.5).step([np.full(3, 1 + 2j)])
    np.testing.assert_array_equal(p, np.full(3, -0.5 - 1j))
