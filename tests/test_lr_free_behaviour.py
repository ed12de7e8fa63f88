"""The learning-rate-free optimizers as users run them: maximize, frozen and non-finite gradients,
Schedule-Free's train/eval contract, validation, the reference path, NumPy state_dicts."""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from _lr_free import (
    PAIRS,
    Problem,
    numpy_problem,
    started,
)

import adaptim
import adaptim.numpy as anp


@pytest.mark.parametrize("name", PAIRS)
def test_maximize_is_minimize_of_the_negated_gradient(name: str) -> None:
    problem = Problem.draw([(3,), (2, 2)], torch.float64, 5)
    ascending, descending = problem.params(), problem.params()
    up, down = started(name, ascending, maximize=True), started(name, descending)
    for _ in range(20):
        problem.set_grads(descending)
        for p, q in zip(ascending, descending, strict=True):
            p.grad = -q.grad
        up.step()
        down.step()
        assert all(torch.equal(p, q) for p, q in zip(ascending, descending, strict=True))


@pytest.mark.parametrize("name", PAIRS)
def test_parameter_without_gradient_is_left_alone(name: str) -> None:
    problem = Problem.draw([(3,), (4,)], torch.float64, 6)
    params = problem.params()
    opt = started(name, params)
    frozen = params[1].detach().clone()
    for _ in range(5):
        problem.set_grads(params)
        params[1].grad = None
        opt.step()
    assert torch.equal(params[1].detach(), frozen) and params[1] not in opt.state


@pytest.mark.parametrize("name", PAIRS)
def test_nonfinite_skip_leaves_everything_unchanged(name: str) -> None:
    problem = Problem.draw([(3,), (4,)], torch.float64, 8)
    params = problem.params()
    opt = started(name, params, nonfinite="skip")
    problem.set_grads(params)
    opt.step()
    before = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params]
    problem.set_grads(params)
    params[0].grad[1] = math.nan  # type: ignore[index]
    opt.step()
    assert opt.skipped_steps == 1  # type: ignore[attr-defined]
    assert all(torch.equal(p, q) for p, q in zip(params, before[1], strict=True))
    assert str(opt.state_dict()) == str(before[0])


@pytest.mark.parametrize("cls", [adaptim.ScheduleFreeAdamW, adaptim.ScheduleFreeSGD])
def test_step_in_eval_mode_is_refused(cls: type[torch.optim.Optimizer]) -> None:
    p = torch.zeros(3, requires_grad=True)
    opt = cls([p])
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match=r"eval mode.*optimizer\.train\(\)"):
        opt.step()  # a new optimizer starts in eval mode, as the reference does
    opt.train()  # type: ignore[attr-defined]
    opt.step()
    opt.eval()  # type: ignore[attr-defined]
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match="eval mode"):
        opt.step()
    assert torch.equal(p, before)


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (adaptim.ScheduleFreeAdamW, {"lr": -1.0}, "Invalid lr: -1.0"),
        (adaptim.ScheduleFreeAdamW, {"betas": (0.0, 0.999)}, "Invalid beta1: 0.0"),
        (adaptim.ScheduleFreeAdamW, {"warmup_steps": 2.5}, "Invalid warmup_steps: 2.5"),
        (adaptim.ScheduleFreeSGD, {"momentum": 1.0}, "Invalid momentum: 1.0"),
        (
            adaptim.ScheduleFreeSGD,
            {"momentum": 0.0},
            r"Invalid momentum: 0.0; allowed: 0 < momentum",
        ),
        (adaptim.ScheduleFreeSGD, {"r": -1.0}, "Invalid r: -1.0"),
        (adaptim.Prodigy, {"d0": 0.0}, r"Invalid d0: 0.0; allowed: 0 < d0"),
        (adaptim.Prodigy, {"slice_p": 0}, "Invalid slice_p: 0"),
        (adaptim.Prodigy, {"growth_rate": 0.5}, "Invalid growth_rate: 0.5"),
        (adaptim.Prodigy, {"fsdp_in_use": True}, "Invalid fsdp_in_use: True"),
    ],
)
def test_bad_hyperparameters_are_refused(
    cls: type[torch.optim.Optimizer], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cls([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("name", PAIRS)
def test_steps_on_the_multi_tensor_path_without_warnings(name: str) -> None:
    """By default these step on the multi-tensor replay (adaptim.torch._group_fast), silently, and say so."""
    problem = Problem.draw([(300,), (20, 20)], torch.float32, 4)  # large enough for the fast path
    params = problem.params()
    opt = started(name, params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            problem.set_grads(params)
            opt.step()
    # (Prodigy's typical slice_p=2 keeps every 2nd coordinate of x0: not element-wise)
    sliced = PAIRS[name].typical.get("slice_p", 1) > 1
    expected = "reference: a state entry of another shape" if sliced else "foreach ("
    assert all(s.startswith(expected) for s in opt.fused_status())  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", PAIRS)
def test_numpy_state_dict_round_trip_continues_identically(name: str) -> None:
    pair = PAIRS[name]
    problem = Problem.draw([(3, 2), ()], torch.float64, 9)
    arrays = [p.detach().numpy().copy() for p in problem.start]
    cls = anp.LR_FREE_OPTIMIZERS[name]

    def grads(ws: list[np.ndarray]) -> list[np.ndarray]:
        return [a * (w - c.numpy()) for w, a, c in numpy_problem(problem, ws)]

    first = cls(arrays, **pair.typical)
    if pair.train_eval:
        first.train()  # type: ignore[attr-defined]
    for _ in range(10):
        first.step(grads(arrays))
    saved = copy.deepcopy(first.state_dict())
    copies = [a.copy() for a in arrays]
    resumed = cls(copies, **pair.typical)
    resumed.load_state_dict(saved)
    for _ in range(10):
        first.step(grads(arrays))
        resumed.step(grads(copies))
    for a, b in zip(arrays, copies, strict=True):
        assert np.array_equal(a, b)
