"""torch.optim's other algorithms (issue 16): Rprop, ASGD and Adafactor against torch.optim.

Parity here is *bit* parity: every parameter and state tensor after
:data:`~_parity.STEPS` steps must equal torch.optim's exactly, in float64 and
float32, on each execution path (the engine's default choice, ``fused=True``
and the per-tensor ``foreach=False``). Hypothesis draws the hyperparameters,
the parameter layouts, how ``lr`` is passed and the gradients, through the
shared machinery of :mod:`_parity`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from _parity import LR, MAXIMIZE, WD, Case, Option, Range, Spec, draw_case, run
from hypothesis import given, note, settings
from hypothesis import strategies as st
from test_torch_parity import PHASES, HypothesisSource

import adaptim
import adaptim.numpy as anp
from adaptim.lab.optimizers import make_optimizer

PATHS: dict[str, dict[str, Any]] = {
    "auto": {},
    "native": {"fused": True},
    "reference": {"foreach": False},
}

SPECS = {
    "Rprop": Spec(
        "Rprop", adaptim.Rprop, torch.optim.Rprop,
        {
            "lr": LR,
            "etas": (Range(0.1, 0.95), Range(1.05, 3.0)),
            "step_sizes": (Range(1e-8, 1e-3, "log"), Range(1e-2, 100.0, "log")),
        },
        (MAXIMIZE,),
    ),
    "ASGD": Spec(
        "ASGD", adaptim.ASGD, torch.optim.ASGD,
        {
            "lr": LR,
            "lambd": Range(1e-5, 1e-1, "log"),
            "alpha": Range(0.25, 1.0),
            # Averaging starts after t0 steps: within the 200 compared, or never.
            "t0": Range(0.0, 300.0),
        },
        (WD, MAXIMIZE),
    ),
    "Adafactor": Spec(
        "Adafactor", adaptim.Adafactor, torch.optim.Adafactor,
        {
            "lr": LR,
            "beta2_decay": Range(-1.0, -0.3),
            "d": Range(1.0, 4.0),
        },
        (WD, MAXIMIZE, Option("eps", {"eps": (Range(1e-30, 1e-3, "log"), Range(1e-4, 1e-2, "log"))},
                              {"eps": (None, 1e-3)})),
    ),
}  # fmt: skip
#: torch computes part of the schedule in the dtype of a tensor ``lr`` (see float_lr).
FLOAT_LR_IN_FLOAT32 = ("ASGD", "Adafactor")


def on_path(spec: Spec, path: str) -> Spec:
    """``spec`` with adaptim's optimizer built for one execution path."""
    cls, switches = spec.ours, PATHS[path]

    def build(params: Any, **kwargs: Any) -> torch.optim.Optimizer:
        return cls(params, **kwargs, **switches)

    return dataclasses.replace(spec, ours=build)  # type: ignore[arg-type]


def float_lr(case: Case) -> Case:
    """The case with ``lr`` passed as a float.

    torch's ASGD computes its ``eta`` schedule, and its Adafactor the relative
    step size, in the dtype of a tensor ``lr`` (float32 rounding for a float32
    tensor); adaptim always computes them in double precision, so with a
    float32 tensor ``lr`` the two differ by about 1e-7 relative (documented in
    the rules).
    """
    groups = tuple(dataclasses.replace(g, lr_form="float") for g in case.groups)
    return dataclasses.replace(case, groups=groups)


def assert_identical(case: Case, dtype: torch.dtype) -> None:
    note(f"{dtype}: {case}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no engine fallback warning either
        result = run(case, dtype)
    assert not result.problems, "\n".join(result.problems)
    errors = {**result.param_errors, **result.state_errors}
    differing = {name: error for name, error in errors.items() if error != 0}
    assert not differing, f"{dtype}: not bit-identical to torch.optim: {differing}"


@pytest.mark.slow  # 200 steps x 2 dtypes x 3 examples, and a native compile
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", SPECS)
@settings(max_examples=3, phases=PHASES, deadline=None)
@given(data=st.data())
def test_bit_identical_to_torch(name: str, path: str, data: st.DataObject) -> None:
    spec = on_path(SPECS[name], path)
    options = data.draw(st.sampled_from(spec.combinations()), label="options")
    case = draw_case(spec, [options], HypothesisSource(data, salt=f"{name} {path}"))
    assert_identical(case, torch.float64)
    assert_identical(float_lr(case) if name in FLOAT_LR_IN_FLOAT32 else case, torch.float32)


@pytest.mark.parametrize("name", SPECS)
@settings(max_examples=2, phases=PHASES, deadline=None)
@given(data=st.data())
def test_param_groups_and_complex_match_torch(name: str, data: st.DataObject) -> None:
    """Two param groups with their own hyperparameters; complex parameters as pairs of reals
    (torch's Adafactor refuses them, see test_adafactor_refuses_complex_parameters)."""
    spec = SPECS[name]
    options = [data.draw(st.sampled_from(spec.combinations())) for _ in range(2)]
    case = draw_case(spec, options, HypothesisSource(data, salt=name), max_params=2)
    assert_identical(case, torch.float64)
    if name != "Adafactor":
        assert_identical(case, torch.complex128)


@pytest.mark.parametrize("module", [adaptim, anp], ids=["torch", "numpy"])
def test_adafactor_refuses_complex_parameters(module: Any) -> None:
    if module is adaptim:
        with pytest.raises(RuntimeError, match=r"Adafactor does not support complex parameters"):
            adaptim.Adafactor([torch.zeros(2, dtype=torch.complex64, requires_grad=True)])
    else:
        with pytest.raises(TypeError, match=r"Adafactor does not support complex parameters"):
            anp.Adafactor([np.zeros(2, dtype=np.complex128)])


def test_adafactor_keeps_factored_state_and_runs_on_the_fast_path() -> None:
    """R + C numbers for an R x C matrix, torch's shapes, and no engine warning: the
    engine replays the row and column statistics per tensor (tests/test_factored_fast.py)."""
    weight = torch.zeros(6, 4, requires_grad=True)
    bias = torch.zeros(6, requires_grad=True)
    optimizer = adaptim.Adafactor([weight, bias])
    weight.grad, bias.grad = torch.ones(6, 4), torch.ones(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer.step()
    assert {k: tuple(v.shape) for k, v in optimizer.state[weight].items()} == {
        "step": (),
        "row_var": (6, 1),
        "col_var": (1, 4),
    }
    assert tuple(optimizer.state[bias]["variance"].shape) == (6,)
    assert optimizer.fused_status() == ["foreach (2 partitions): 2 of 2 tensors"]


# -- state_dict both ways -------------------------------------------------------------------
def _trajectory(seed: int, count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=generator, dtype=torch.float64) for _ in range(count)]


def _steps(optimizer: torch.optim.Optimizer, p: torch.Tensor, grads: list[torch.Tensor]) -> None:
    for grad in grads:
        p.grad = grad.clone()
        optimizer.step()


CLASSES: dict[str, tuple[type[torch.optim.Optimizer], type[torch.optim.Optimizer]]] = {
    "Rprop": (adaptim.Rprop, torch.optim.Rprop),
    "ASGD": (adaptim.ASGD, torch.optim.ASGD),
    "Adafactor": (adaptim.Adafactor, torch.optim.Adafactor),
}
HPARAMS: dict[str, dict[str, Any]] = {
    "Rprop": {"lr": 0.03, "etas": (0.4, 1.5)},
    "ASGD": {"lr": 0.05, "lambd": 1e-2, "t0": 10, "weight_decay": 1e-3},
    "Adafactor": {"lr": 0.05, "beta2_decay": -0.7, "d": 1.2, "weight_decay": 1e-2},
}


@pytest.mark.parametrize("direction", ["torch->adaptim", "adaptim->torch"])
@pytest.mark.parametrize("name", CLASSES)
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**16), first=st.integers(1, 30))
def test_state_dict_moves_both_ways(name: str, direction: str, seed: int, first: int) -> None:
    """Save after ``first`` steps on one side, load on the other, continue: same as never moving."""
    ours_cls, torch_cls = CLASSES[name]
    source_cls, target_cls = (
        (torch_cls, ours_cls) if direction == "torch->adaptim" else (ours_cls, torch_cls)
    )
    grads = _trajectory(seed, first + 40)
    start = torch.randn(
        4, 3, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64
    )
    p_ref = start.clone().requires_grad_()
    reference = torch_cls([p_ref], **HPARAMS[name])
    _steps(reference, p_ref, grads)

    p = start.clone().requires_grad_()
    source = source_cls([p], **HPARAMS[name])
    _steps(source, p, grads[:first])
    saved = source.state_dict()
    target = target_cls([p], **HPARAMS[name])
    target.load_state_dict(saved)
    assert set(target.state_dict()["param_groups"][0]) == set(saved["param_groups"][0])
    _steps(target, p, grads[first:])
    assert torch.equal(p, p_ref)
    for key, value in reference.state[p_ref].items():
        assert torch.equal(target.state[p][key], value), key


# -- the NumPy front-end --------------------------------------------------------------------
@pytest.mark.parametrize("name", CLASSES)
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from([np.float64, np.float32]))
def test_numpy_front_end_follows_torch(name: str, seed: int, dtype: type) -> None:
    """The NumPy front-end runs the same rule; without fused multiply-adds it may differ by
    rounding only (float32: 1e-5 relative, float64: 1e-12, after 100 steps)."""
    grads = _trajectory(seed, 100)
    start = torch.randn(
        4, 3, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64
    )
    p = start.clone().to(getattr(torch, np.dtype(dtype).name)).requires_grad_()
    reference = CLASSES[name][1]([p], **HPARAMS[name])
    w = start.numpy().astype(dtype)
    ours = getattr(anp, name)([w], **HPARAMS[name])
    for grad in grads:
        p.grad = grad.to(p.dtype)
        reference.step()
        ours.step([grad.numpy().astype(dtype)])
    tolerance = 1e-12 if dtype == np.float64 else 1e-5
    expected = p.detach().double().numpy()
    assert np.max(np.abs(w - expected)) <= tolerance * np.max(np.abs(expected))


# -- validation, effective_lr, the lab -------------------------------------------------------
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("Rprop", {"lr": -1.0}, r"Invalid lr: -1\.0; allowed: 0 <= lr"),
    ("Rprop", {"etas": (1.2, 0.5)}, r"Invalid etas: \(1\.2, 0\.5\); allowed: 0 < etaminus < 1"),
    ("Rprop", {"etas": (0.0, 1.2)}, r"Invalid etas: \(0\.0, 1\.2\)"),
    ("Rprop", {"etas": 0.5}, r"Invalid etas: 0\.5; expected a pair"),
    ("Rprop", {"step_sizes": (-1.0, 50)}, r"step_sizes\[0\] \(minimum step\): -1\.0"),
    ("Rprop", {"step_sizes": (1.0, 0.5)}, r"step_sizes\[1\] \(maximum step\): 0\.5; allowed: 1"),
    ("ASGD", {"lr": -1.0}, r"Invalid lr: -1\.0"),
    ("ASGD", {"lambd": -1e-4}, r"Invalid lambd: -0\.0001; allowed: 0 <= lambd"),
    ("ASGD", {"alpha": math.nan}, r"Invalid alpha: nan"),
    ("ASGD", {"t0": -1.0}, r"Invalid t0: -1\.0; allowed: 0 <= t0"),
    ("ASGD", {"weight_decay": -0.1}, r"Invalid weight_decay: -0\.1"),
]


@pytest.mark.parametrize(("name", "settings_", "message"), REFUSED)
@pytest.mark.parametrize("module", [adaptim, anp], ids=["torch", "numpy"])
def test_bad_hyperparameters_are_refused(
    module: Any, name: str, settings_: dict[str, Any], message: str
) -> None:
    param: Any = torch.zeros(2, requires_grad=True) if module is adaptim else np.zeros(2)
    with pytest.raises(ValueError, match=message):
        getattr(module, name)([param], **settings_)


def test_rprop_refuses_sparse_gradients() -> None:
    embedding = torch.nn.Embedding(5, 2, sparse=True)
    embedding(torch.tensor([1, 3])).sum().backward()
    optimizer = adaptim.Rprop(embedding.parameters())
    with pytest.raises(RuntimeError, match=r"adaptim\.Rprop does not support sparse gradients"):
        optimizer.step()


def _adafactor_rate(p: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Transcribed from Shazeer & Stern's equations for the next step, before clipping."""
    step = float(state["step"]) + 1
    rho = min(HPARAMS["Adafactor"]["lr"], step**-0.5)
    alpha = max(1e-3, p.detach().square().mean().sqrt().item()) * rho
    row, col = state["row_var"], state["col_var"]
    eps1 = torch.finfo(p.dtype).eps
    estimate = row * col / row.mean().clamp(min=eps1)
    return alpha / estimate.clamp(min=eps1**2).sqrt()


EFFECTIVE: dict[str, Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]] = {
    "Rprop": lambda p, state: state["step_size"],
    "ASGD": lambda p, state: state["eta"].double().expand(4, 3),
    "Adafactor": _adafactor_rate,
}


@pytest.mark.parametrize("name", CLASSES)
def test_effective_lr_reads_the_state(name: str) -> None:
    p = torch.ones(4, 3, dtype=torch.float64, requires_grad=True)
    optimizer = CLASSES[name][0]([p], **HPARAMS[name])
    assert optimizer.effective_lr() == [None]
    _steps(optimizer, p, _trajectory(0, 5))
    (rate,) = optimizer.effective_lr()
    assert rate is not None
    expected = EFFECTIVE[name](p, optimizer.state[p]).to(rate.dtype)
    torch.testing.assert_close(rate, expected, rtol=1e-12, atol=0)


ADAFACTOR_REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"lr": -1.0}, r"Invalid lr: -1\.0"),
    ({"beta2_decay": 0.5}, r"Invalid beta2_decay: 0\.5; allowed: beta2_decay <= 0"),
    ({"eps": 1e-3}, r"Invalid eps: 0\.001; expected a pair \(eps1 or None, eps2\)"),
    ({"eps": (-1.0, 1e-3)}, r"Invalid eps\[0\] \(eps1\): -1\.0; allowed: 0 <= "),
    ({"eps": (None, -1e-3)}, r"Invalid eps\[1\] \(eps2\): -0\.001; allowed: 0 <= "),
    ({"d": 0.5}, r"Invalid d: 0\.5; allowed: 1 <= d"),
    ({"weight_decay": -1.0}, r"Invalid weight_decay: -1\.0"),
]


@pytest.mark.parametrize(("settings_", "message"), ADAFACTOR_REFUSED)
@pytest.mark.parametrize("module", [adaptim, anp], ids=["torch", "numpy"])
def test_bad_adafactor_hyperparameters_are_refused(
    module: Any, settings_: dict[str, Any], message: str
) -> None:
    param: Any = torch.zeros(2, requires_grad=True) if module is adaptim else np.zeros(2)
    with pytest.raises(ValueError, match=message):
        module.Adafactor([param], **settings_)


def test_state_from_another_shape_is_refused_with_its_expected_shape() -> None:
    p = torch.zeros(3, 5, requires_grad=True)
    theirs = torch.optim.Adafactor([torch.zeros(5, 3, requires_grad=True)])
    theirs.param_groups[0]["params"][0].grad = torch.ones(5, 3)
    theirs.step()
    with pytest.raises(ValueError, match=r"'row_var' has shape \(5, 1\); expected \(3, 1\)"):
        adaptim.Adafactor([p]).load_state_dict(theirs.state_dict())


@pytest.mark.parametrize("name", ["rprop", "asgd", "adafactor"])
def test_lab_builds_and_trains_each(name: str) -> None:
    """The lab's entry builds the optimizer and it lowers a least-squares loss."""
    torch.manual_seed(0)
    x, w_true = torch.randn(64, 5), torch.randn(5)
    y = x @ w_true
    w = torch.randn(5).requires_grad_()  # Adafactor steps relative to the RMS of w
    optimizer = make_optimizer(name, [w], {"lr": 0.3 if name == "adafactor" else 0.01})
    assert (
        type(optimizer).__name__
        == {"rprop": "Rprop", "asgd": "ASGD", "adafactor": "Adafactor"}[name]
    )

    def loss() -> torch.Tensor:
        return ((x @ w - y) ** 2).mean()

    start = loss().item()
    for _ in range(100):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < 0.5 * start


def test_numpy_unknown_hyperparameter_names_a_close_match() -> None:
    with pytest.raises(TypeError, match=r"'step_size'.*Did you mean 'step_sizes'\?"):
        anp.Rprop([np.zeros(2)], step_size=(1e-6, 50))
