"""The multi-tensor path of the learning-rate-free optimizers equals their per-tensor reference path.

By default Schedule-Free, Prodigy, D-Adaptation, DoG and the hypergradient
optimizers record their gather and update once per partition and replay them
with ``torch._foreach_*`` kernels (:mod:`adaptim.torch._group_fast`);
``foreach=False`` steps each tensor with the rule itself. Both must give the
same bits: parameters, every state entry and the group scalars, on drawn
shapes, dtypes and hyperparameters, with several param groups (Prodigy and
D-Adaptation share one ``d`` across them), train/eval switches, a
``state_dict`` reload mid-run, and 1 or 2 threads.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from _lr_free import GROUP_CASES as CASES
from _lr_free import NO_SHRINK, SHAPES, Problem
from _threads import num_threads
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim


def build(name: str, params: list[torch.Tensor], hp: dict[str, Any], reference: bool) -> Any:
    """Two param groups (the second ascends for group-scope rules); ``reference``: foreach=False."""
    cls, _, train_eval = CASES[name]
    half = max(1, len(params) // 2)
    groups: list[dict[str, Any]] = [{"params": params[:half]}]
    if params[half:]:
        groups.append({"params": params[half:], "weight_decay": 0.0})
    if reference:
        for group in groups:
            group["foreach"] = False
    optimizer = cls(groups, **hp)
    if train_eval:
        optimizer.train()
    return optimizer


def run(optimizer: Any, params: list[torch.Tensor], problem: Problem, steps: int) -> None:
    train_eval = hasattr(optimizer, "eval")
    for step in range(steps):
        if train_eval and step % 7 == 6:  # evaluate at x, then back to y
            optimizer.eval()
            optimizer.train()
        problem.set_grads(params)
        if step == 3 and len(params) > 1:
            params[-1].grad = None  # a tensor that skips a step: partitions change
        optimizer.step()
    if train_eval:
        optimizer.eval()


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, where a diverged run's NaNs count as equal to each other."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and bool(((a == b) | (a.isnan() & b.isnan())).all())
    )


def assert_identical(a: Any, pa: list[torch.Tensor], b: Any, pb: list[torch.Tensor]) -> None:
    for index, (x, y) in enumerate(zip(pa, pb, strict=True)):
        assert same(x, y), f"param {index}"
        sa, sb = a.state[x], b.state[y]
        assert set(sa) == set(sb)
        for key, value in sb.items():
            if isinstance(value, torch.Tensor):
                assert same(sa[key], value), f"state {key} of param {index}"
            else:
                assert sa[key] == value or sa[key] != sa[key], f"state {key} of param {index}"
    for ga, gb in zip(a.param_groups, b.param_groups, strict=True):
        for key, value in gb.items():
            if key not in ("params", "foreach"):
                equal = ga[key] == value or (
                    isinstance(value, float) and math.isnan(value) and math.isnan(ga[key])
                )
                assert equal, key


def expected_status(name: str, hp: dict[str, Any]) -> str:
    if name == "prodigy" and hp.get("slice_p", 1) > 1:  # x0 and s on every k-th coordinate
        return "reference: "  # (a state entry of another shape, or a strided slice)
    return "foreach ("


@pytest.mark.slow
@pytest.mark.parametrize("thread_count", [1, 2])
@pytest.mark.parametrize("name", CASES)
@settings(max_examples=6, deadline=None, phases=NO_SHRINK)
@given(data=st.data())
def test_fast_path_equals_reference_path(name: str, thread_count: int, data: st.DataObject) -> None:
    shapes = data.draw(SHAPES, "shapes")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), "dtype")
    hp = CASES[name][1](data)
    problem = Problem.draw(shapes, dtype, data.draw(st.integers(0, 2**16), "seed"))
    with num_threads(thread_count):
        runs = []
        for reference in (False, True):
            params = problem.params()
            optimizer = build(name, params, hp, reference)
            run(optimizer, params, problem, 20)
            runs.append((optimizer, params))
    (fast, pf), (ref, pr) = runs
    assert_identical(fast, pf, ref, pr)
    assert all(s.startswith(expected_status(name, hp)) for s in fast.fused_status())
    assert all(s == "reference: foreach=False" for s in ref.fused_status())
    if expected_status(name, hp) == "foreach (":
        assert all(fast.plans())


@pytest.mark.parametrize("name", CASES)
def test_state_dict_reload_mid_run_continues_bit_identically(name: str) -> None:
    problem = Problem.draw([(6, 5), (5,), (3,)], torch.float32, 1)
    # (SGD-HD's default hypergradient rate diverges on this quadratic)
    hp: dict[str, Any] = {"hypergrad_lr": 1e-5} if name == "sgd-hd" else {}
    params, reference_params = problem.params(), problem.params()
    reference = build(name, reference_params, hp, reference=True)
    first = build(name, params, hp, reference=False)
    for optimizer, tensors in ((reference, reference_params), (first, params)):
        run(optimizer, tensors, problem, 12)  # (Schedule-Free: ends in eval mode, at x)
    saved = copy.deepcopy(first.state_dict())
    second = build(name, params, hp, reference=False)
    second.load_state_dict(saved)
    for optimizer, tensors in ((reference, reference_params), (second, params)):
        if hasattr(optimizer, "train"):
            optimizer.train()
        run(optimizer, tensors, problem, 12)
    assert_identical(second, params, reference, reference_params)


def test_status_says_which_path_and_why() -> None:
    """Defaults replay; foreach=False, LDoG (a step size per tensor) and odd tensors step per tensor."""
    problem = Problem.draw([(4, 3), (3,)], torch.float32, 2)
    params = problem.params()
    opt = adaptim.Prodigy(params)
    assert opt.fused_status() == ["not stepped yet"]
    problem.set_grads(params)
    opt.step()
    assert opt.fused_status() == ["foreach (1 partition): 2 tensors"]
    dog = adaptim.LDoG(problem.params())
    problem.set_grads(dog.param_groups[0]["params"])
    dog.step()
    assert dog.fused_status()[0].startswith("reference: the rule is not element-wise")
    odd = [torch.randn(3, 4).t().requires_grad_(True)]  # non-contiguous
    opt = adaptim.DAdaptAdam(odd)
    odd[0].grad = torch.randn(4, 3)
    opt.step()
    assert opt.fused_status() == [
        "reference: a non-contiguous tensor or a gradient of another dtype"
    ]
    sliced = adaptim.Prodigy(problem.params(), slice_p=2)
    problem.set_grads(sliced.param_groups[0]["params"])
    sliced.step()
    assert sliced.fused_status()[0].startswith("reference: a state entry of another shape")
