"""Optimizer input: ``load_state_dict`` checks, non-finite hyperparameters, all-or-nothing steps."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adaptim
import adaptim.numpy as anp
from adaptim.algorithms import ALGORITHMS

NAMES = [
    "SGD",
    "Adagrad",
    "RMSprop",
    "Adadelta",
    "Adam",
    "AdamW",
    "Adamax",
    "NAdam",
    "RAdam",
    "LARS",
    "LAMB",
]
#: A state_dict names no class. These pairs hold the same keys and entries
#: (Adam and AdamW are one algorithm; RAdam's groups are a subset of Adam's),
#: so they load, as they do between the torch.optim classes.
INDISTINGUISHABLE = {("Adam", "AdamW"), ("AdamW", "Adam"), ("RAdam", "Adam"), ("RAdam", "AdamW")}
PATHS = [{"foreach": False}, {}, {"fused": True}, {"foreach": True}]


def make_params() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randn(3, 2, generator=generator, requires_grad=True),
        torch.randn(4, generator=generator, requires_grad=True),
    ]


def stepped(name: str, steps: int = 2, **kwargs: Any) -> torch.optim.Optimizer:
    params = make_params()
    kwargs = {"momentum": 0.9, **kwargs} if name == "SGD" else kwargs
    optimizer = getattr(adaptim, name)(params, **kwargs)
    for _ in range(steps):
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.step()
    return optimizer


def snapshot(optimizer: torch.optim.Optimizer) -> tuple[list[torch.Tensor], dict[str, Any]]:
    params = [p.detach().clone() for g in optimizer.param_groups for p in g["params"]]
    return params, copy.deepcopy(optimizer.state_dict())


def assert_same(before: Any, after: Any) -> None:
    if isinstance(before, torch.Tensor):
        assert isinstance(after, torch.Tensor)
        assert before.dtype == after.dtype and before.shape == after.shape
        assert torch.equal(before, after)
    elif isinstance(before, dict):
        assert isinstance(after, dict) and set(before) == set(after)
        for key in before:
            assert_same(before[key], after[key])
    elif isinstance(before, list | tuple):
        assert len(before) == len(after)
        for b, a in zip(before, after, strict=True):
            assert_same(b, a)
    elif isinstance(before, float) and math.isnan(before):
        assert math.isnan(after)
    else:
        assert before == after


def assert_unchanged(optimizer: torch.optim.Optimizer, before: Any) -> None:
    assert_same(before, snapshot(optimizer))


# -- another optimizer's state_dict -------------------------------------------------------------
@pytest.mark.parametrize(("source", "target"), [(s, t) for t in NAMES for s in NAMES if s != t])
def test_state_dict_of_another_class_is_refused(source: str, target: str) -> None:
    saved = stepped(source).state_dict()
    optimizer = stepped(target)
    before = snapshot(optimizer)
    if (source, target) in INDISTINGUISHABLE:
        optimizer.load_state_dict(saved)
        return
    with pytest.raises(ValueError, match=rf"Invalid state_dict for adaptim\.{target}, ") as error:
        optimizer.load_state_dict(saved)
    assert "another optimizer" in str(error.value) or "entry" in str(error.value)
    assert_unchanged(optimizer, before)


@pytest.mark.parametrize(
    ("source", "target"), [("Adam", "LAMB"), ("Adam", "SGD"), ("SGD", "Adam"), ("LAMB", "Adam")]
)
def test_foreign_hyperparameters_are_named(source: str, target: str) -> None:
    with pytest.raises(ValueError, match=r"param_groups\[0\]: hyperparameters? '") as error:
        getattr(adaptim, target)(make_params()).load_state_dict(stepped(source).state_dict())
    assert f"not adaptim.{target}'s" in str(error.value)


@pytest.mark.parametrize("source", ["SGD", "Adagrad", "RMSprop", "Adam", "NAdam", "LAMB"])
def test_foreign_state_entries_alone_are_refused(source: str) -> None:
    """Groups cleaned of the other class's keys still fail on the state entries."""
    saved = stepped(source).state_dict()
    target = "Adadelta"
    own = stepped(target).state_dict()
    saved["param_groups"] = own["param_groups"]
    with pytest.raises(ValueError, match=r"parameter 0 .*(unexpected|missing) entry"):
        getattr(adaptim, target)(make_params()).load_state_dict(saved)


# -- wrong state -----------------------------------------------------------------------------------
BAD_ENTRIES: list[tuple[str, Any, str]] = [
    ("exp_avg", torch.zeros(5), "has shape \\(5,\\); expected \\(4,\\)"),
    ("exp_avg", torch.zeros(2, 2), "has shape \\(2, 2\\)"),
    ("exp_avg", torch.zeros(4, dtype=torch.int64), "expected a real floating array"),
    ("exp_avg", torch.zeros(4, dtype=torch.bool), "expected a real floating array"),
    ("exp_avg", torch.zeros(4, dtype=torch.complex64), "expected a real floating array"),
    ("exp_avg", [0.0] * 4, "expected a real floating array"),
    ("exp_avg_sq", None, "missing entry 'exp_avg_sq'"),
    ("step", torch.tensor(float("nan")), "'step' is nan"),
    ("step", torch.tensor(-1.0), "'step' is -1.0; expected a finite number >= 0"),
    ("step", torch.tensor(float("inf")), "'step' is inf"),
    ("step", torch.zeros(3), "'step' is an array of shape \\(3,\\)"),
    ("step", "3", "'step' is '3'"),
    ("step", None, "missing entry 'step'"),
    ("sum", torch.zeros(4), "unexpected entry 'sum'"),
    ("momentum_buffer", torch.zeros(4), "unexpected entry 'momentum_buffer'"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_ENTRIES)
def test_wrong_state_entries_are_refused_before_anything_changes(
    key: str, value: Any, message: str
) -> None:
    saved = stepped("Adam").state_dict()
    if value is None:
        del saved["state"][1][key]
    else:
        saved["state"][1][key] = value
    optimizer = stepped("Adam", steps=1)
    before = snapshot(optimizer)
    with pytest.raises(ValueError, match=message) as error:
        optimizer.load_state_dict(saved)
    assert "param_groups[0], parameter 1 (state id 1, shape (4,))" in str(error.value)
    assert_unchanged(optimizer, before)


def test_state_of_a_complex_parameter_must_be_complex() -> None:
    params = [torch.randn(3, dtype=torch.complex64, requires_grad=True)]
    optimizer = adaptim.Adam(params)
    params[0].grad = torch.ones_like(params[0])
    optimizer.step()
    saved = optimizer.state_dict()
    saved["state"][0]["exp_avg"] = torch.zeros(3)
    with pytest.raises(ValueError, match="expected a complex floating array"):
        adaptim.Adam(params).load_state_dict(saved)


def test_group_and_parameter_counts_are_checked() -> None:
    saved = stepped("Adam").state_dict()
    with pytest.raises(ValueError, match="it has 1 param groups; this optimizer has 2"):
        p, q = make_params()
        adaptim.Adam([{"params": [p]}, {"params": [q]}]).load_state_dict(saved)
    with pytest.raises(ValueError, match="it has 2 parameters; this optimizer's group has 1"):
        adaptim.Adam(make_params()[:1]).load_state_dict(saved)
    with pytest.raises(ValueError, match="expected a mapping with 'state' and 'param_groups'"):
        adaptim.Adam(make_params()).load_state_dict({"state": {}})


# -- hyperparameters in a loaded state_dict ----------------------------------------------------------
BAD_GROUPS: list[tuple[str, dict[str, Any]]] = [
    ("Adam", {"lr": -5}),
    ("Adam", {"betas": (float("nan"), 2)}),
    ("Adam", {"betas": (0.9, 1.0)}),
    ("Adam", {"lr": float("inf")}),
    ("Adam", {"lr": 10**400}),
    ("Adam", {"eps": float("nan")}),
    ("Adam", {"weight_decay": float("inf")}),
    ("Adam", {"amsgrad": "yes"}),
    ("AdamW", {"weight_decay": -1.0}),
    ("SGD", {"momentum": float("inf")}),
    ("SGD", {"nesterov": True, "momentum": 0.0}),
    ("SGD", {"lr": "fast"}),
    ("Adagrad", {"lr_decay": -1.0}),
    ("RMSprop", {"alpha": 1.5}),
    ("Adadelta", {"rho": float("nan")}),
    ("NAdam", {"momentum_decay": float("inf")}),
    ("RAdam", {"lr": float("-inf")}),
    ("LARS", {"trust_coefficient": float("inf")}),
    ("LARS", {"trust_coefficient": 0.0}),
    ("LAMB", {"weight_norm_clip": (5.0, 1.0)}),
    ("Adam", {"maximize": 1}),
    ("Adam", {"capturable": True}),
]


@pytest.mark.parametrize(("name", "bad"), BAD_GROUPS)
def test_loaded_hyperparameters_get_the_construction_message(
    name: str, bad: dict[str, Any]
) -> None:
    with pytest.raises((TypeError, ValueError)) as at_construction:
        getattr(adaptim, name)(make_params(), **bad)
    saved = stepped(name).state_dict()
    saved["param_groups"][0].update(bad)
    optimizer = stepped(name, steps=1)
    before = snapshot(optimizer)
    with pytest.raises(at_construction.type) as at_load:
        optimizer.load_state_dict(saved)
    assert str(at_load.value) == (
        f"Invalid state_dict for adaptim.{name}, param_groups[0]: {at_construction.value}"
    )
    assert_unchanged(optimizer, before)


# -- torch's layouts still load, and continue bit for bit ---------------------------------------------
TORCH_CASES: list[tuple[str, dict[str, Any]]] = [
    ("SGD", {}),
    ("SGD", {"momentum": 0.9, "nesterov": True}),
    ("Adagrad", {}),
    ("Adagrad", {"initial_accumulator_value": 0.1}),
    ("RMSprop", {"momentum": 0.5, "centered": True}),
    ("Adadelta", {}),
    ("Adam", {"amsgrad": True}),
    ("AdamW", {}),
    ("Adamax", {}),
    ("NAdam", {}),
    ("RAdam", {}),
]


@pytest.mark.parametrize("steps", [0, 3])
@pytest.mark.parametrize(("name", "kwargs"), TORCH_CASES)
def test_torch_state_dicts_load_and_continue(name: str, kwargs: dict[str, Any], steps: int) -> None:
    ours, theirs = make_params(), make_params()
    reference = getattr(torch.optim, name)(theirs, **kwargs, foreach=False)
    for _ in range(steps):
        for p in theirs:
            p.grad = torch.full_like(p, 0.5)
        reference.step()
    with torch.no_grad():
        for mine, other in zip(ours, theirs, strict=True):
            mine.copy_(other)
    optimizer = getattr(adaptim, name)(ours, **kwargs)
    # torch's state_dict() shares the state tensors (and loading keeps them): copy.
    optimizer.load_state_dict(copy.deepcopy(reference.state_dict()))
    for _ in range(2):
        for p, q in zip(ours, theirs, strict=True):
            p.grad = torch.full_like(p, 0.25)
            q.grad = torch.full_like(q, 0.25)
        reference.step()
        optimizer.step()
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q)


def test_step_as_a_plain_number_loads_as_a_tensor() -> None:
    """Old torch versions saved ``step`` as a Python number."""
    saved = stepped("Adam").state_dict()
    for entry in saved["state"].values():
        entry["step"] = int(entry["step"])
    optimizer = adaptim.Adam(make_params())
    optimizer.load_state_dict(saved)
    assert all(isinstance(s["step"], torch.Tensor) for s in optimizer.state.values())
    for p in optimizer.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert all(float(s["step"]) == 3.0 for s in optimizer.state.values())


def test_scheduler_keys_in_groups_are_kept() -> None:
    optimizer = stepped("Adam")
    torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
    saved = optimizer.state_dict()
    fresh = adaptim.Adam(make_params())
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["max_lr"] == 0.1


# -- property: any corruption is refused whole, or loads and steps -----------------------------------
corruptions = st.tuples(
    st.sampled_from(["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "sum", "lr", "betas"]),
    st.sampled_from(
        [
            None,
            float("nan"),
            float("inf"),
            -1.0,
            0.5,
            7,
            (0.5, 0.5),
            (0.9, float("inf")),
            "x",
            (4,),
            (5,),
            (3, 2),
            (),
        ]
    ),
    st.sampled_from([torch.float32, torch.float64, torch.int32, torch.complex64]),
    st.integers(0, 1),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corruption=corruptions)
def test_corrupted_state_dicts_are_refused_whole_or_work(
    corruption: tuple[str, Any, torch.dtype, int],
) -> None:
    key, value, dtype, index = corruption
    saved = stepped("Adam").state_dict()
    target: dict[Any, Any] = (
        saved["param_groups"][0] if key in ("lr", "betas") else saved["state"][index]
    )
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        value = torch.ones(value, dtype=dtype)
    if value is None:
        target.pop(key, None)
    else:
        target[key] = value
    optimizer = stepped("Adam", steps=1)
    before = snapshot(optimizer)
    try:
        optimizer.load_state_dict(saved)
    except (TypeError, ValueError) as error:
        assert str(error).startswith("Invalid state_dict for adaptim.Adam, param_groups[0]")
        assert_unchanged(optimizer, before)
        return
    for p in optimizer.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert all(bool(torch.isfinite(p).all()) for p in optimizer.param_groups[0]["params"])


# -- non-finite hyperparameters ------------------------------------------------------------------------
NUMERIC = ["lr", "eps", "weight_decay", "momentum", "dampening", "alpha", "rho", "lr_decay"]
NUMERIC += ["initial_accumulator_value", "momentum_decay", "trust_coefficient", "rectify_threshold"]
NONFINITE = [float("inf"), float("-inf"), float("nan"), 10**400]


def _numeric_cases() -> list[tuple[str, str, Any]]:
    cases = []
    for name in NAMES:
        hparams = ALGORITHMS[name.lower()].hparams
        cases += [(name, key, v) for key in NUMERIC if key in hparams for v in NONFINITE]
        if "betas" in hparams:
            cases += [(name, "betas", (v, 0.999)) for v in NONFINITE]
            cases += [(name, "betas", (0.9, v)) for v in NONFINITE]
    return cases


@pytest.mark.parametrize(("name", "key", "value"), _numeric_cases())
def test_nonfinite_hyperparameters_are_refused_everywhere(name: str, key: str, value: Any) -> None:
    shown = key if key != "betas" else ("beta1" if value[1] == 0.999 else "beta2")
    message = rf"^Invalid {shown}: .*(expected a finite number|too large for a float)"
    with pytest.raises(ValueError, match=message):
        getattr(adaptim, name)(make_params(), **{key: value})
    optimizer = getattr(adaptim, name)(make_params()[:1])
    with pytest.raises(ValueError, match=message):
        optimizer.add_param_group({"params": make_params()[1:], key: value})
    assert len(optimizer.param_groups) == 1
    with pytest.raises(ValueError, match=f"param_groups\\[0\\]: Invalid {shown}: "):
        saved = optimizer.state_dict()
        saved["param_groups"][0][key] = value
        optimizer.load_state_dict(saved)
    with pytest.raises(ValueError, match=message):
        getattr(anp, name)([np.zeros(3)], **{key: value})


def test_huge_integer_learning_rate_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="Invalid lr: an integer of 401 digits; too large"):
        adaptim.Adam(make_params(), lr=10**400)


def test_infinite_upper_weight_norm_clip_means_no_clip() -> None:
    adaptim.LAMB(make_params(), weight_norm_clip=(0.0, float("inf")))
    with pytest.raises(ValueError, match="Invalid weight_norm_clip\\[0\\]: inf"):
        adaptim.LAMB(make_params(), weight_norm_clip=(float("inf"), float("inf")))


# -- all-or-nothing steps -------------------------------------------------------------------------------
def _three_params() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(5, 3, generator=generator, requires_grad=True) for _ in range(3)]


def _break_shape(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    optimizer.state[params[1]]["exp_avg"] = torch.zeros(7)


def _break_dtype(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    optimizer.state[params[1]]["exp_avg_sq"] = torch.zeros(5, 3, dtype=torch.int64)


def _break_grad_dtype(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    params[2].data = params[2].data.double()  # its gradient stays float32


def _break_sparse(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    params[2].grad = params[2].grad.to_sparse()


def _break_missing(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    del optimizer.state[params[2]]["exp_avg"]


BREAKS = {
    "state shape": (_break_shape, "'exp_avg' has shape \\(7,\\)"),
    "state dtype": (_break_dtype, "'exp_avg_sq' is an array of shape"),
    "gradient dtype": (_break_grad_dtype, "its gradient has dtype torch.float32"),
    "sparse gradient": (_break_sparse, "does not support sparse gradients"),
    "missing state": (_break_missing, "missing entry 'exp_avg'"),
}


#: Breaks of the state need a state: before the first step there is none to break.
STATELESS_BREAKS = ("state shape", "state dtype", "missing state")


@pytest.mark.parametrize("path", PATHS, ids=["reference", "auto", "native", "foreach"])
@pytest.mark.parametrize(
    ("broken", "first_step"),
    [
        (b, first)
        for b in BREAKS
        for first in (False, True)
        if not (first and b in STATELESS_BREAKS)
    ],
)
def test_a_failing_step_changes_nothing(
    path: dict[str, Any], broken: str, first_step: bool
) -> None:
    params = _three_params()
    p0, p1, p2 = params
    optimizer = adaptim.Adam([{"params": [p0]}, {"params": [p1, p2]}], **path)
    for p in params:
        p.grad = torch.ones_like(p)
    if not first_step:
        optimizer.step()
        optimizer.step()
    breaker, message = BREAKS[broken]
    breaker(optimizer, params)
    before_params = [p.detach().clone() for p in params]
    before_state = {
        i: {
            k: v.clone() if isinstance(v, torch.Tensor) else v
            for k, v in optimizer.state[p].items()
        }
        for i, p in enumerate(params)
        if p in optimizer.state
    }
    with pytest.raises(RuntimeError, match=message):
        optimizer.step()
    for p, before in zip(params, before_params, strict=True):
        assert p.dtype != before.dtype or torch.equal(p, before)
    after_state = {
        i: dict(optimizer.state[p]) for i, p in enumerate(params) if p in optimizer.state
    }
    assert_same(before_state, after_state)


def test_a_failing_first_step_leaves_no_state_and_the_next_one_works() -> None:
    params = _three_params()
    optimizer = adaptim.Adam(params)
    for p in params:
        p.grad = torch.ones_like(p)
    params[2].grad = params[2].grad.to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        optimizer.step()
    assert len(optimizer.state) == 0
    params[2].grad = torch.ones_like(params[2])
    optimizer.step()
    reference = torch.optim.Adam([p.detach().clone().requires_grad_() for p in _three_params()])
    for p in reference.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    reference.step()
    for p, q in zip(params, reference.param_groups[0]["params"], strict=True):
        torch.testing.assert_close(p, q)


def test_numpy_failing_step_changes_nothing() -> None:
    params = [np.ones(3), np.ones(4), np.ones(2)]
    optimizer = anp.Adam(params)
    grads = [np.ones(3), np.ones(4), np.ones(2)]
    optimizer.step(grads)
    optimizer.state[2]["exp_avg"] = np.zeros(5)
    before = copy.deepcopy(optimizer.state_dict())
    before_params = [p.copy() for p in params]
    with pytest.raises(ValueError, match=r"cannot step parameter 2 .*'exp_avg' has shape \(5,\)"):
        optimizer.step(grads)
    for p, b in zip(params, before_params, strict=True):
        assert np.array_equal(p, b)
    after = optimizer.state_dict()
    for index in before["state"]:
        for key, value in before["state"][index].items():
            assert np.array_equal(np.asarray(value), np.asarray(after["state"][index][key]))


# -- the NumPy front-end's load_state_dict ---------------------------------------------------------------
def test_numpy_load_state_dict_checks_like_torch() -> None:
    adam = anp.Adam([np.ones(3)])
    adam.step([np.ones(3)])
    sgd = anp.SGD([np.ones(3)], momentum=0.9)
    sgd.step([np.ones(3)])
    with pytest.raises(ValueError, match=r"hyperparameters .* are not adaptim.numpy.SGD's"):
        anp.SGD([np.ones(3)]).load_state_dict(adam.state_dict())
    with pytest.raises(ValueError, match=r"hyperparameters .* are not adaptim.numpy.Adam's"):
        anp.Adam([np.ones(3)]).load_state_dict(sgd.state_dict())
    saved = adam.state_dict()
    saved["param_groups"][0]["lr"] = -5
    target = anp.Adam([np.ones(3)])
    with pytest.raises(ValueError, match=r"param_groups\[0\]: Invalid lr: -5.0; allowed: 0 <= lr"):
        target.load_state_dict(saved)
    assert target.param_groups[0]["lr"] == 1e-3 and target.state == {}
    saved = adam.state_dict()
    saved["state"][0]["exp_avg"] = np.zeros(4)
    with pytest.raises(ValueError, match=r"parameter 0 .*'exp_avg' has shape \(4,\)"):
        target.load_state_dict(saved)
    saved = adam.state_dict()
    saved["state"][0]["exp_avg"] = np.zeros(3, dtype=np.int64)
    with pytest.raises(ValueError, match="expected a real floating array"):
        target.load_state_dict(saved)
    target.load_state_dict(adam.state_dict())  # its own loads
    target.load_state_dict(torch_state_as_numpy())


def torch_state_as_numpy() -> dict[str, Any]:
    params = [torch.ones(3, dtype=torch.float64, requires_grad=True)]
    optimizer = torch.optim.Adam(params)
    params[0].grad = torch.ones_like(params[0])
    optimizer.step()
    saved = optimizer.state_dict()
    saved["state"] = {
        i: {k: v.numpy() for k, v in entry.items()} for i, entry in saved["state"].items()
    }
    return saved


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(NAMES),
    key=st.sampled_from(["lr", "eps", "weight_decay", "momentum", "alpha", "trust_coefficient"]),
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**400), max_value=10**400),
    ),
)
def test_load_refuses_exactly_what_construction_refuses(name: str, key: str, value: Any) -> None:
    """A loaded group is accepted iff construction accepts it, and refused with its message."""
    if key not in ALGORITHMS[name.lower()].hparams:
        return
    try:
        getattr(adaptim, name)(make_params(), **{key: value})
    except ValueError as error:
        construction: ValueError | None = error
    else:
        construction = None
    optimizer = getattr(adaptim, name)(make_params())
    saved = optimizer.state_dict()
    saved["param_groups"][0][key] = value
    if construction is None:
        optimizer.load_state_dict(saved)
        assert optimizer.param_groups[0][key] == value
        return
    with pytest.raises(ValueError) as at_load:
        optimizer.load_state_dict(saved)
    assert str(at_load.value).endswith(f"param_groups[0]: {construction}")


def test_load_pre_hooks_run_once_before_the_check() -> None:
    """What a pre-hook hands torch is what is checked (here it repairs a foreign key)."""
    calls = []

    def drop_amsgrad(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        state_dict = copy.deepcopy(state_dict)
        for group in state_dict["param_groups"]:
            group.pop("amsgrad", None)
            group.pop("decoupled_weight_decay", None)
        return state_dict

    optimizer = adaptim.LAMB(make_params())
    optimizer.register_load_state_dict_pre_hook(drop_amsgrad)
    saved = adaptim.Adam(make_params()).state_dict()
    optimizer.load_state_dict(saved)
    assert calls == [1]
    assert len(optimizer._optimizer_load_state_dict_pre_hooks) == 1
