"""Parity of the learning-rate-free optimizers with their reference packages (see :mod:`_lr_free`).

Hypothesis draws the shapes, the hyperparameters and the seed; every run is
:data:`~_parity.STEPS` steps of a quadratic whose gradient depends on the
parameters.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _lr_free import (
    NO_SHRINK,
    PAIRS,
    SHAPES,
    Problem,
    assert_close,
    numpy_problem,
    run_pair,
)
from _parity import STEPS, TOLERANCE, relative_error
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim.numpy as anp


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", PAIRS)
@settings(max_examples=3, phases=NO_SHRINK)
@given(data=st.data())
def test_matches_reference(name: str, dtype: torch.dtype, data: st.DataObject) -> None:
    pair = PAIRS[name]
    shapes = data.draw(SHAPES, "shapes")
    problem = Problem.draw(shapes, dtype, data.draw(st.integers(0, 2**31), "seed"))
    assert_close(pair, run_pair(pair, problem, pair.draw(data), STEPS), dtype)


#: The optimizers whose estimate is shared by all param groups.
SHARED_D = [name for name in PAIRS if name.startswith(("prodigy", "dadapt"))]


@pytest.mark.parametrize("name", SHARED_D)
@settings(max_examples=2, phases=NO_SHRINK)
@given(data=st.data())
def test_param_groups_share_one_estimate_as_the_reference(name: str, data: st.DataObject) -> None:
    """Three groups (own weight decay, one frozen with lr=0, one starting at zero): one ``d`` for all."""
    pair = PAIRS[name]
    problem = Problem.draw([(3,), (2, 2), (4,)], torch.float64, data.draw(st.integers(0, 99)))
    problem.start[2].zero_()  # an all-zero tensor: prodigyopt keeps a 0-d x0 for it
    hp = pair.draw(data)
    runs = []
    for cls in (pair.ours, pair.reference):
        params = problem.params()
        groups = [
            {"params": [params[0]]},
            {"params": [params[1]], "weight_decay": 0.05, "lr": 0.0},
            {"params": [params[2]], "eps": 1e-6},
        ]
        opt = cls(groups, **hp)
        for _ in range(60):
            problem.set_grads(params)
            opt.step()
        runs.append((params, opt))
    assert_close(pair, runs, torch.float64)
    assert len({g["d"] for g in runs[0][1].param_groups}) == 1


@pytest.mark.parametrize("name", ["prodigy", "dadapt-adam", "dadapt-sgd"])
def test_groups_with_different_lr_are_refused_before_anything_changes(name: str) -> None:
    a, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = PAIRS[name].ours([{"params": [a]}, {"params": [b], "lr": 0.5}])
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    with pytest.raises(ValueError, match=r"Invalid lr: 0.5 in param group 1.*same or 0"):
        opt.step()
    assert not opt.state and torch.equal(a, torch.ones(2))


@pytest.mark.parametrize("name", PAIRS)
@settings(max_examples=2, phases=NO_SHRINK)
@given(data=st.data())
def test_state_dict_moves_both_ways(name: str, data: st.DataObject) -> None:
    """Half the run in one package, the rest in the other: the same as the whole run in either."""
    pair = PAIRS[name]
    problem = Problem.draw(data.draw(SHAPES, "shapes"), torch.float64, 7)
    hp = pair.draw(data)
    whole = run_pair(pair, problem, hp, 60)
    for first, second in ((pair.ours, pair.reference), (pair.reference, pair.ours)):
        params = problem.params()
        opt = first(params, **hp)
        for step in range(30):
            if pair.train_eval and step == 0:
                opt.train()  # type: ignore[attr-defined]
            problem.set_grads(params)
            opt.step()
        saved = copy.deepcopy(opt.state_dict())
        resumed = second(params, **hp)
        resumed.load_state_dict(saved)
        for _ in range(30):
            problem.set_grads(params)
            resumed.step()
        if pair.train_eval:
            resumed.eval()  # type: ignore[attr-defined]
            whole[0][1].eval()
        for a, b in zip(params, whole[0][0], strict=True):
            assert relative_error(a.detach(), b.detach()) <= TOLERANCE[torch.float64]


@pytest.mark.parametrize("name", PAIRS)
def test_numpy_front_end_matches_torch(name: str) -> None:
    pair = PAIRS[name]
    problem = Problem.draw([(3, 2), (4,)], torch.float64, 3)
    hp = pair.typical
    params = problem.params()
    opt = pair.ours(params, **hp)
    arrays = [p.detach().numpy().copy() for p in params]
    twin = anp.LR_FREE_OPTIMIZERS[name](arrays, **hp)
    for step in range(40):
        if pair.train_eval and step == 0:
            opt.train()  # type: ignore[attr-defined]
            twin.train()  # type: ignore[attr-defined]
        problem.set_grads(params)
        opt.step()
        twin.step([a * (w - c.numpy()) for w, a, c in numpy_problem(problem, arrays)])
    for p, w in zip(params, arrays, strict=True):
        np.testing.assert_allclose(w, p.detach().numpy(), rtol=1e-10, atol=1e-12)
    for rate, twin_rate in zip(opt.effective_lr(), twin.effective_lr(), strict=True):  # type: ignore[attr-defined]
        np.testing.assert_allclose(twin_rate, rate.numpy(), rtol=1e-10)
