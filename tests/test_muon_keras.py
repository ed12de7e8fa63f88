"""``Muon(flavor="keras")`` against Keras 3.15's ``keras.optimizers.Muon``.

Keras runs on its torch backend (the backend is chosen once per process, as in
``test_flavors_keras.py``), with ``keras.config.floatx()`` set to each run's
dtype, so its learning rate is kept in that dtype too. Both sides start from
the same parameters and take :data:`STEPS` steps; each gradient is computed
from the side's *current* parameters (a noisy, mildly non-linear pull towards
a target), so a difference in any step feeds the next ones instead of
averaging out. The shapes mix matrices (Muon) with scalars, vectors, rank-3
and conv-shaped rank-4 tensors (Keras' AdamW fallback), and sometimes a matrix
named like an output layer that Keras excludes with ``exclude_layers`` and
adaptim puts in a param group with ``adamw_for="all"``.

Precision: Keras' torch backend computes two things in float32 even when
``floatx`` is float64. ``ops.norm`` promotes float64 to float32 (Keras'
``result_type(float64, float)`` rule), so the normalisation before the
Newton–Schulz iteration is off by up to ~1e-7 relative, and the step is
scaled by ``ops.sqrt(ops.maximum(rows, cols))``, a float32 root of an
integer. :func:`exact_keras` swaps those two ops of Keras' Muon module for
float64 ones: against that, float64 agrees to rounding
(:data:`EXACT_FLOAT64`), which shows the arithmetic is Keras'. Against
Keras as shipped, float64 stays within :data:`KERAS_FLOAT64` (measured up to
the value noted there) and float32 within :data:`KERAS_FLOAT32`.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

import adaptim
import adaptim.numpy as anp

# A test dependency CI installs: a missing Keras must fail, not skip.
keras = importlib.import_module("keras")
keras_muon = importlib.import_module("keras.src.optimizers.muon")
assert keras.backend.backend() == "torch", "these tests need KERAS_BACKEND=torch"

# Keras' torch backend converts with np.array(x) on every step (NumPy 2 copy= deprecation).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

STEPS = 200
#: Measured up to 2e-11 (20 drawn cases), most cases 1e-15.
EXACT_FLOAT64 = 1e-10
#: Measured up to 5e-8 in float64 and 4e-6 in float32 (20 drawn cases) on rectangular
#: matrices. The iteration's polynomial has slope a^k at 0 (1660 for k = 6), so a
#: perturbation along a small singular value of the momentum grows: on a square
#: 4x4 matrix with six iterations one drawn case grew Keras' float32 norm to 4e-4
#: in float64 (and float32 rounding to 3e-3), while the exact comparison stayed
#: at 2e-11. The comparisons against Keras as shipped therefore draw rectangles.
KERAS_FLOAT64 = 1e-6
KERAS_FLOAT32 = 1e-4

Arrays = list[np.ndarray]

#: Matrices, tall and wide, whose momentum keeps its smallest singular value away from 0.
RECTANGLES = ((3, 5), (6, 2), (7, 3), (2, 11), (1, 4))
#: With square ones too, where it may come close to 0 (see :data:`KERAS_FLOAT64`).
MATRICES = (*RECTANGLES, (4, 4))
#: What Keras steps with AdamW: scalars, vectors, rank-3 and conv kernels (out, in, kh, kw).
OTHERS = ((), (5,), (1,), (2, 3, 4), (4, 3, 3, 3), (2, 2, 1, 3))

#: The output layer's name: Keras excludes it by ``exclude_layers``, adaptim by group.
EXCLUDED = "output_dense"


class _Float64Ops:
    """Keras' ``ops`` with ``norm`` and ``sqrt`` in the input's own precision."""

    def __getattr__(self, name: str) -> Any:
        return getattr(keras.ops, name)

    @staticmethod
    def norm(x: torch.Tensor, axis: Any = None, keepdims: bool = False) -> torch.Tensor:
        return torch.linalg.vector_norm(x, dim=axis, keepdim=keepdims)

    @staticmethod
    def sqrt(x: Any) -> torch.Tensor:
        value = keras.ops.convert_to_tensor(x)
        return torch.sqrt(value if value.is_floating_point() else value.double())


@contextlib.contextmanager
def exact_keras() -> Iterator[None]:
    """Keras' Muon with its two float32 computations (see above) done in float64."""
    saved = keras_muon.ops
    keras_muon.ops = _Float64Ops()
    try:
        yield
    finally:
        keras_muon.ops = saved


def hyperparameters() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "lr": st.floats(1e-3, 5e-2),
            "momentum": st.floats(0.0, 0.99),
            "nesterov": st.booleans(),
            "ns_steps": st.integers(1, 6),
            "weight_decay": st.sampled_from([0.0, 0.004, 0.1]),
            "adam_weight_decay": st.sampled_from([0.0, 0.004, 0.05]),
            "adam_beta_1": st.floats(0.0, 0.95),
            "adam_beta_2": st.floats(0.9, 0.999),
            "epsilon": st.sampled_from([1e-7, 1e-4, 1e-2]),
            "adam_lr_ratio": st.sampled_from([1.0, 0.1, 0.5]),
            "rms_rate": st.sampled_from([0.2, 0.5, None]),
        }
    )


def gradient(values: np.ndarray, target: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """A pull towards ``target``, non-linear in the parameter, plus this step's noise."""
    return np.asarray((values - target) + 0.1 * values**3 + noise, dtype=values.dtype)


def _case(
    shapes: Sequence[tuple[int, ...]], seed: int, dtype: type
) -> tuple[Arrays, Arrays, list[Arrays]]:
    rng = np.random.default_rng(seed)
    starts = [rng.standard_normal(s).astype(dtype) for s in shapes]
    targets = [rng.standard_normal(s).astype(dtype) for s in shapes]
    noises = [[(0.3 * rng.standard_normal(s)).astype(dtype) for s in shapes] for _ in range(STEPS)]
    return starts, targets, noises


def run_keras(
    starts: Arrays, targets: Arrays, noises: list[Arrays], hp: dict[str, Any], exclude: bool
) -> Arrays:
    dtype = str(starts[0].dtype)
    previous = keras.config.floatx()
    keras.config.set_floatx(dtype)
    try:
        names = [f"w{i}" for i in range(len(starts))]
        if exclude:
            names[0] = EXCLUDED
        variables = [
            keras.Variable(p, dtype=dtype, name=n) for p, n in zip(starts, names, strict=True)
        ]
        optimizer = keras.optimizers.Muon(
            learning_rate=hp["lr"], momentum=hp["momentum"], nesterov=hp["nesterov"],
            ns_steps=hp["ns_steps"], weight_decay=hp["weight_decay"],
            adam_weight_decay=hp["adam_weight_decay"], adam_beta_1=hp["adam_beta_1"],
            adam_beta_2=hp["adam_beta_2"], epsilon=hp["epsilon"],
            adam_lr_ratio=hp["adam_lr_ratio"], rms_rate=hp["rms_rate"],
            exclude_layers=[EXCLUDED] if exclude else None,
        )  # fmt: skip
        for noise in noises:
            values = [keras.ops.convert_to_numpy(v.value) for v in variables]
            grads = [torch.tensor(gradient(*a)) for a in zip(values, targets, noise, strict=True)]
            optimizer.apply_gradients(zip(grads, variables, strict=True))
        return [keras.ops.convert_to_numpy(v.value).copy() for v in variables]
    finally:
        keras.config.set_floatx(previous)


def adaptim_settings(hp: dict[str, Any]) -> dict[str, Any]:
    """Keras' arguments under adaptim's names (``flavor="keras"`` sets the rest)."""
    settings_ = {
        "lr": hp["lr"],
        "momentum": hp["momentum"],
        "nesterov": hp["nesterov"],
        "ns_steps": hp["ns_steps"],
        "weight_decay": hp["weight_decay"],
        "adam_weight_decay": hp["adam_weight_decay"],
        "adam_betas": (hp["adam_beta_1"], hp["adam_beta_2"]),
        "adam_eps": hp["epsilon"],
        "adam_lr_ratio": hp["adam_lr_ratio"],
    }
    if hp["rms_rate"] is None:
        settings_["adjust_lr_fn"] = "unscaled"
    else:
        settings_["rms_rate"] = hp["rms_rate"]
    return settings_


def _groups(params: list[Any], exclude: bool) -> list[dict[str, Any]]:
    if not exclude:
        return [{"params": params}]
    excluded = {"params": params[:1], "adamw_for": "all"}
    return [excluded, {"params": params[1:]}] if len(params) > 1 else [excluded]


def run_torch(
    starts: Arrays, targets: Arrays, noises: list[Arrays], hp: dict[str, Any], exclude: bool
) -> Arrays:
    params = [torch.tensor(p, requires_grad=True) for p in starts]
    optimizer = adaptim.Muon(_groups(params, exclude), flavor="keras", **adaptim_settings(hp))
    for noise in noises:
        for p, target, n in zip(params, targets, noise, strict=True):
            p.grad = torch.from_numpy(gradient(p.detach().numpy(), target, n))
        optimizer.step()
    return [p.detach().numpy().copy() for p in params]


def run_numpy(
    starts: Arrays, targets: Arrays, noises: list[Arrays], hp: dict[str, Any], exclude: bool
) -> Arrays:
    params = [p.copy() for p in starts]
    optimizer = anp.Muon(_groups(params, exclude), flavor="keras", **adaptim_settings(hp))
    for noise in noises:
        optimizer.step([gradient(*a) for a in zip(params, targets, noise, strict=True)])
    return params


def worst_error(ours: Arrays, theirs: Arrays, starts: Arrays) -> float:
    """max|a - b| / max|b| per parameter (``max|b|`` over its start and end), worst over all."""
    worst = 0.0
    for mine, reference, start in zip(ours, theirs, starts, strict=True):
        scale = max(float(np.abs(reference).max()), float(np.abs(start).max()), 1e-30)
        worst = max(worst, float(np.abs(mine.astype(np.float64) - reference).max()) / scale)
    return worst


def check(
    shapes: Sequence[tuple[int, ...]],
    hp: dict[str, Any],
    exclude: bool,
    seed: int,
    tolerances: dict[type, float],
    exact: bool = False,
) -> None:
    for dtype, tolerance in tolerances.items():
        starts, targets, noises = _case(shapes, seed, dtype)
        with exact_keras() if exact else contextlib.nullcontext():
            theirs = run_keras(starts, targets, noises, hp, exclude)
        for run in (run_torch, run_numpy):
            ours = run(starts, targets, noises, hp, exclude)
            error = worst_error(ours, theirs, starts)
            note(f"{dtype.__name__} {run.__name__}: {error:.3g}")
            assert error <= tolerance, f"{dtype.__name__} {run.__name__}: {error:.3g}"


@pytest.mark.slow  # 200 Keras steps x 1-2 dtypes x 3 sides x 6 examples, twice
@pytest.mark.parametrize("keras_ops", ["float64", "as shipped"])
@settings(max_examples=6, deadline=None)
@given(
    data=st.data(),
    others=st.lists(st.sampled_from(OTHERS), min_size=0, max_size=2),
    hp=hyperparameters(),
    exclude=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_keras_flavor_matches_keras_muon(
    keras_ops: str,
    data: st.DataObject,
    others: list[tuple[int, ...]],
    hp: dict[str, Any],
    exclude: bool,
    seed: int,
) -> None:
    """With Keras' norm and root in float64: the same arithmetic, to rounding. As
    shipped: float64 to those two float32 computations, float32 to rounding."""
    exact = keras_ops == "float64"
    drawn = st.lists(st.sampled_from(MATRICES if exact else RECTANGLES), min_size=1, max_size=2)
    matrices = data.draw(drawn, label="matrices")
    tolerances = (
        {np.float64: EXACT_FLOAT64}
        if exact
        else {np.float64: KERAS_FLOAT64, np.float32: KERAS_FLOAT32}
    )
    check([*matrices, *others], hp, exclude, seed, tolerances, exact=exact)


def test_keras_flavor_defaults_match_keras_defaults() -> None:
    """``Muon(flavor="keras")`` with no argument is ``keras.optimizers.Muon()``."""
    shapes = [(4, 3), (3,), (2, 3, 2, 2)]
    starts, targets, noises = _case(shapes, 0, np.float64)
    noises = noises[:20]
    previous = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        variables = [keras.Variable(p, dtype="float64", name=f"w{i}") for i, p in enumerate(starts)]
        reference = keras.optimizers.Muon()
        with exact_keras():
            for noise in noises:
                values = [keras.ops.convert_to_numpy(v.value) for v in variables]
                grads = [
                    torch.tensor(gradient(*a)) for a in zip(values, targets, noise, strict=True)
                ]
                reference.apply_gradients(zip(grads, variables, strict=True))
        theirs = [keras.ops.convert_to_numpy(v.value) for v in variables]
    finally:
        keras.config.set_floatx(previous)
    params = [torch.tensor(p, requires_grad=True) for p in starts]
    optimizer = adaptim.Muon(params, flavor="keras")
    for noise in noises:
        for p, target, n in zip(params, targets, noise, strict=True):
            p.grad = torch.from_numpy(gradient(p.detach().numpy(), target, n))
        optimizer.step()
    assert worst_error([p.detach().numpy() for p in params], theirs, starts) <= EXACT_FLOAT64


def test_keras_flavor_state_is_muons_for_matrices_and_adamws_for_the_rest() -> None:
    weight = torch.randn(4, 3, requires_grad=True)
    bias = torch.randn(3, requires_grad=True)
    kernel = torch.randn(2, 3, 3, 3, requires_grad=True)
    optimizer = adaptim.Muon([weight, bias, kernel], flavor="keras")
    for p in (weight, bias, kernel):
        p.grad = torch.randn_like(p)
    optimizer.step()
    optimizer.step()
    assert set(optimizer.state[weight]) == {"momentum_buffer"}
    for p in (bias, kernel):
        assert set(optimizer.state[p]) == {"step", "exp_avg", "exp_avg_sq"}
        assert float(optimizer.state[p]["step"]) == 2.0
    rates = optimizer.effective_lr()
    assert rates[0] is not None and torch.allclose(
        rates[0], torch.full_like(weight, 1e-3 * 0.2 * 2)
    )
    assert rates[1] is not None and rates[1].shape == bias.shape


@settings(max_examples=3, deadline=None)
@given(first=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_keras_flavor_state_dict_resumes_identically(first: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (3,), (2, 2, 3)]
    starts = [torch.randn(*s, generator=generator, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(*s, generator=generator, dtype=torch.float64) for s in shapes]] * 20

    def run(params: list[torch.Tensor], optimizer: Any, steps: list[list[torch.Tensor]]) -> None:
        for step_grads in steps:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            optimizer.step()

    whole = [s.clone().requires_grad_() for s in starts]
    run(whole, adaptim.Muon(whole, flavor="keras"), grads)
    part = [s.clone().requires_grad_() for s in starts]
    saved = adaptim.Muon(part, flavor="keras")
    run(part, saved, grads[:first])
    resumed = adaptim.Muon(part, flavor="keras")
    resumed.load_state_dict(saved.state_dict())
    run(part, resumed, grads[first:])
    for mine, reference in zip(part, whole, strict=True):
        assert torch.equal(mine, reference)


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        ({"adamw_for": "vectors"}, r"Invalid adamw_for: 'vectors'; allowed: None, 'non_matrix'"),
        ({"ns_precision": "float16"}, r"Invalid ns_precision: 'float16'; allowed: 'bfloat16'"),
        ({"adam_betas": (0.9, 1.0)}, r"Invalid adam_betas \(beta2\): 1\.0"),
        ({"adam_eps": -1.0}, r"Invalid adam_eps: -1\.0"),
        ({"rms_rate": -0.2}, r"Invalid rms_rate: -0\.2"),
        ({"adjust_lr_fn": "none"}, r"Invalid adjust_lr_fn: 'none'.*'unscaled'"),
    ],
)
@pytest.mark.parametrize("module", [adaptim, anp], ids=["torch", "numpy"])
def test_bad_keras_options_are_refused(
    module: Any, settings_: dict[str, Any], message: str
) -> None:
    param: Any = torch.zeros(2, 2, requires_grad=True) if module is adaptim else np.zeros((2, 2))
    with pytest.raises(ValueError, match=message):
        module.Muon([param], flavor="keras", **settings_)


def test_a_torch_flavored_group_can_send_its_parameters_to_adamw() -> None:
    """``adamw_for`` is an option of its own: torch's Muon with Keras' fallback for one group."""
    weight = torch.randn(4, 3, requires_grad=True)
    bias = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"only supports 2-D parameters"):
        adaptim.Muon([weight, bias])
    optimizer = adaptim.Muon([{"params": [weight]}, {"params": [bias], "adamw_for": "non_matrix"}])
    weight.grad, bias.grad = torch.ones_like(weight), torch.ones_like(bias)
    before = bias.detach().clone()
    optimizer.step()
    # AdamW's first step moves every coordinate by lr (its m/sqrt(v) is 1), after decay
    expected = before * (1 - 1e-3 * 0.004) - 1e-3 * (1 / (1 + 1e-7 / math.sqrt(1 - 0.999)))
    assert torch.allclose(bias, expected, rtol=0, atol=1e-9)
    assert set(optimizer.state[weight]) == {"momentum_buffer"}


def test_lab_muon_at_keras_is_keras_muon_on_every_parameter() -> None:
    from adaptim.lab.optimizers import make_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = make_optimizer("muon@keras", model.parameters(), {"lr": 0.01})
    assert optimizer.fallback is None  # type: ignore[union-attr]
    assert len(optimizer.param_groups[0]["params"]) == 4
    model(torch.randn(5, 4)).square().sum().backward()
    optimizer.step()
    bias = model[0].bias
    assert set(optimizer.state[bias]) == {"step", "exp_avg", "exp_avg_sq"}


@pytest.mark.parametrize("module", [adaptim, anp], ids=["torch", "numpy"])
def test_none_means_the_flavors_value_in_both_front_ends(module: Any) -> None:
    """torch's signature default ``None`` cannot be told from a passed ``None``."""
    param: Any = torch.zeros(2, 2, requires_grad=True) if module is adaptim else np.zeros((2, 2))
    optimizer = module.Muon([param], flavor="keras", adjust_lr_fn=None, adamw_for=None)
    group = optimizer.param_groups[0]
    assert (group["adjust_lr_fn"], group["adamw_for"]) == ("match_rms_adamw", "non_matrix")
    torch_flavored = module.Muon([param], adjust_lr_fn=None).param_groups[0]
    assert torch_flavored["adjust_lr_fn"] is None
