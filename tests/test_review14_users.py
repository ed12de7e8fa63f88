"""What users do around the default step that earlier tests left out (review14).

Each test runs the same loop twice, once with torch.optim's class and once
with adaptim's, and asks for the same bits: torch.optim is the oracle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from _threads import num_threads
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim

# torch.optim twins that keep a ``step`` counter, with options that use it
STEPPED: list[tuple[str, dict[str, Any]]] = [
    ("Adam", {}),
    ("Adam", {"amsgrad": True, "weight_decay": 0.1}),
    ("AdamW", {}),
    ("Adagrad", {"lr_decay": 0.01}),
    ("Adamax", {}),
    ("NAdam", {}),
    ("NAdam", {"decoupled_weight_decay": True, "weight_decay": 0.1}),
    ("RAdam", {}),
    ("Rprop", {}),
    ("ASGD", {"t0": 2.0}),
    ("Adafactor", {}),
    ("RMSprop", {"centered": True}),
    ("Adadelta", {}),
]


def _edit_counters(
    optimizer: torch.optim.Optimizer, params: list[torch.Tensor], how: str, value: int
) -> None:
    """Set step counts (or scalar state) by hand, as code that restarts bias correction does."""
    for p in params:
        state = optimizer.state[p]
        if how == "fill":
            state["step"].fill_(float(value))
        elif how == "sub":
            state["step"] -= 1.0
        elif how == "assign":
            state["step"] = torch.tensor(float(value))
        elif how == "scalar":  # NAdam's mu_product, ASGD's eta: edited in place
            for key in ("mu_product", "eta"):
                if key in state:
                    state[key].mul_(0.5)


def _run(
    cls: Callable[..., torch.optim.Optimizer],
    options: dict[str, Any],
    dtype: torch.dtype,
    seed: int,
    edits: list[tuple[int, str, int, list[int]]],
) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    model.to(dtype)
    x, y = torch.randn(8, 5, dtype=dtype), torch.randn(8, 3, dtype=dtype)
    params = list(model.parameters())
    optimizer = cls(params, lr=0.01, **options)
    for i in range(7):
        optimizer.zero_grad()
        (model(x) - y).square().mean().backward()
        optimizer.step()
        for when, how, value, which in edits:
            if when == i:
                _edit_counters(optimizer, [params[k] for k in which], how, value)
    return [p.detach() for p in params]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("name", "options"), STEPPED, ids=[f"{n}{o}" for n, o in STEPPED])
@settings(max_examples=6, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    edits=st.lists(
        st.tuples(
            st.integers(0, 5),
            st.sampled_from(["fill", "sub", "assign", "scalar"]),
            st.integers(1, 4),
            st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_step_counts_set_by_hand_are_followed(
    threads: int,
    name: str,
    options: dict[str, Any],
    seed: int,
    dtype: torch.dtype,
    edits: list[tuple[int, str, int, list[int]]],
) -> None:
    """``state["step"].fill_(1)``, ``-= 1`` or a new tensor between steps: torch.optim reads
    the counter every step; the default path's partitions mirrored it on the host and went on
    from the old count (bias corrections, RAdam's switch, ASGD's and NAdam's scalars)."""
    with num_threads(threads):
        theirs = _run(getattr(torch.optim, name), options, dtype, seed, edits)
        ours = _run(getattr(adaptim, name), options, dtype, seed, edits)
    for mine, ref in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, ref, rtol=0, atol=0, equal_nan=True)


def test_step_counts_set_by_hand_are_followed_without_a_c_compiler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the counters cannot be checked in C, each is read."""
    from adaptim.torch import _counters

    monkeypatch.setattr(_counters, "_checker", lambda: None)
    edits = [(1, "fill", 1, [0, 2]), (3, "scalar", 1, [1, 3])]
    for name, options in (("Adam", {}), ("NAdam", {}), ("ASGD", {"t0": 2.0})):
        theirs = _run(getattr(torch.optim, name), options, torch.float32, 5, edits)
        ours = _run(getattr(adaptim, name), options, torch.float32, 5, edits)
        for mine, ref in zip(ours, theirs, strict=True):
            torch.testing.assert_close(mine, ref, rtol=0, atol=0)


@pytest.mark.parametrize("path", [{"foreach": True}, {"fused": True}], ids=["foreach", "fused"])
@pytest.mark.parametrize("name", ["Adam", "NAdam", "RAdam", "Adagrad"])
def test_step_counts_set_by_hand_are_followed_on_every_path(
    name: str, path: dict[str, Any]
) -> None:
    """The replay and ``fused=True`` mirror the counters too; torch's for-loop is the reference."""
    edits = [(1, "fill", 1, [0, 1, 2, 3]), (3, "sub", 1, [1, 3]), (4, "scalar", 1, [0, 2])]
    theirs = _run(getattr(torch.optim, name), {"foreach": False}, torch.float32, 11, edits)
    ours = _run(getattr(adaptim, name), path, torch.float32, 11, edits)
    for mine, ref in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, ref, rtol=0, atol=0)


@pytest.mark.parametrize(("name", "options"), [("Adam", {}), ("ASGD", {"t0": 2.0})])
def test_float32_step_counts_stop_at_2_24_as_torchs_do(name: str, options: dict[str, Any]) -> None:
    """torch's float32 ``step += 1`` stops at 2**24; the mirror follows the counters (ASGD's eta
    reads the step) and, once they agree again, the partition is not rebuilt."""

    def run(cls: Callable[..., torch.optim.Optimizer]) -> tuple[list[torch.Tensor], set[int]]:
        torch.manual_seed(3)
        params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
        optimizer = cls(params, lr=0.01, **options)
        built = set()
        for i in range(7):
            for p in params:
                p.grad = torch.randn_like(p)
            optimizer.step()
            if i == 0:
                for state in optimizer.state.values():
                    state["step"].fill_(2.0**24 - 3)
            engine = getattr(optimizer, "_engine", None)
            if engine is not None and i >= 2:
                built.update(id(p) for p in engine.groups[0].partitions)
        return [p.detach() for p in params], built

    theirs, _ = run(getattr(torch.optim, name))
    ours, built = run(getattr(adaptim, name))
    for mine, ref in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, ref, rtol=0, atol=0)
    assert len(built) == 1


# -- a param group's parameters: torch's errors, saying which parameter --------------------

_MODEL = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
_W0, _B0, _W1, _B1 = _MODEL.parameters()

# (what is passed, torch's message, where adaptim's says the parameter is)
BAD_PARAMS: dict[str, tuple[Callable[[], Any], type[Exception], str, str]] = {
    "a non-leaf tensor": (
        lambda: [_W0, _B0 * 2],
        ValueError,
        "can't optimize a non-leaf Tensor",
        "param_groups[0]['params'][1], of shape (3,)",
    ),
    "a non-leaf tensor alone": (
        lambda: [{"params": _W0 * 2}],
        ValueError,
        "can't optimize a non-leaf Tensor",
        "param_groups[0]['params'][0], of shape (3, 4)",
    ),
    "two lists": (
        lambda: [[_W0, _B0], [_W1, _B1]],
        TypeError,
        "optimizer can only optimize Tensors, but one of the params is list",
        "param_groups[0]['params'][0]; to give several lists",
    ),
    "a parameter in two groups": (
        lambda: [{"params": [_W0, _B0]}, {"params": [_W1, _B0]}],
        ValueError,
        "some parameters appear in more than one parameter group",
        "param_groups[1]['params'][1], of shape (3,), is also param_groups[0]['params'][1]",
    ),
    "a group without params": (
        lambda: [{"params": [_W0]}, {"lr": 0.1}],
        KeyError,
        "params",
        "param_groups[1] has no 'params' key (its keys: 'lr')",
    ),
}


@pytest.mark.parametrize("case", list(BAD_PARAMS))
@pytest.mark.parametrize(
    "name",
    sorted(c.__name__ for c in adaptim.OPTIMIZERS.values() if hasattr(torch.optim, c.__name__)),
)
def test_bad_params_are_refused_as_torch_does_naming_the_parameter(name: str, case: str) -> None:
    make, error, torchs, where = BAD_PARAMS[case]
    cls = getattr(adaptim, name)
    options = {"lr": 0.01} if name == "SGD" else {}
    with pytest.raises(error) as theirs:
        getattr(torch.optim, name)(make(), **options)
    with pytest.raises(error) as ours:
        cls(make(), **options)
    assert str(ours.value.args[0]).startswith(theirs.value.args[0]), (ours.value, theirs.value)
    assert torchs in str(ours.value) and where in str(ours.value)


def test_a_group_added_with_a_non_leaf_is_not_added() -> None:
    optimizer = adaptim.Adam([_W0])
    with pytest.raises(ValueError, match=r"non-leaf Tensor: param_groups\[1\]\['params'\]\[0\]"):
        optimizer.add_param_group({"params": (p * 1 for p in [_W1])})
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize("name", ["Adam", "AdamW", "NAdam", "RAdam", "Adamax"])
def test_param_groups_keep_betas_as_torch_does(name: str) -> None:
    """torch.optim.Adam and AdamW turn a list of betas into a tuple (the others keep the list):
    a state_dict compared with torch's, or betas used as a key, then behave the same."""
    w = torch.nn.Parameter(torch.ones(2))
    theirs = getattr(torch.optim, name)([w], betas=[0.8, 0.9]).state_dict()["param_groups"]
    ours = getattr(adaptim, name)([w], betas=[0.8, 0.9]).state_dict()["param_groups"]
    assert type(ours[0]["betas"]) is type(theirs[0]["betas"])
    assert ours[0]["betas"] == theirs[0]["betas"]
