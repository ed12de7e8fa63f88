"""Parity of the learning-rate-free optimizers with their reference packages.

Both optimizers minimise the same random quadratic
``0.5 * sum(a * (p - c)**2)`` (curvatures ``a`` log-uniform in [0.1, 10]), so
each gradient depends on the parameters it is taken at, for
:data:`~_parity.STEPS` steps; every parameter, state tensor and group scalar
must agree to :data:`~_parity.TOLERANCE` (relative error of :mod:`_parity`).
Hypothesis draws the shapes, the hyperparameters and the seed.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dadaptation
import numpy as np
import prodigyopt
import pytest
import schedulefree
import torch
from _parity import STEPS, TOLERANCE, relative_error
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import adaptim
import adaptim.numpy as anp

Params = list[torch.Tensor]

#: A failure is reported as drawn: shrinking 200-step runs takes minutes.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
Draw = Callable[[st.DataObject], dict[str, Any]]


def _log(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(math.log(low), math.log(high)).map(math.exp)


SHAPES = st.lists(
    st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple), min_size=1, max_size=3
)


@dataclass(frozen=True)
class Pair:
    """An adaptim optimizer, its reference, and how to draw their shared arguments."""

    ours: type[torch.optim.Optimizer]
    reference: type[torch.optim.Optimizer]
    draw: Draw
    #: Group keys (the scalars the rules keep) compared after the run.
    scalars: tuple[str, ...]
    #: Fixed arguments with every option on, for the NumPy-against-torch check.
    typical: dict[str, Any]
    train_eval: bool = False


def _schedule(data: st.DataObject) -> dict[str, Any]:
    return {
        "weight_decay": data.draw(st.sampled_from([0.0, 1e-3, 0.1]), "weight_decay"),
        "warmup_steps": data.draw(st.integers(0, 50), "warmup_steps"),
        "r": data.draw(st.sampled_from([0.0, 0.5, 2.0]), "r"),
        "weight_lr_power": data.draw(st.sampled_from([0.0, 1.0, 2.0]), "weight_lr_power"),
    }


def _draw_sf_adamw(data: st.DataObject) -> dict[str, Any]:
    betas = (data.draw(st.floats(0.5, 0.95), "beta1"), data.draw(_log(0.9, 0.9999), "beta2"))
    return {
        "lr": data.draw(_log(1e-4, 1e-1), "lr"),
        "betas": betas,
        "eps": data.draw(_log(1e-10, 1e-3), "eps"),
        **_schedule(data),
    }


def _draw_sf_sgd(data: st.DataObject) -> dict[str, Any]:
    return {
        "lr": data.draw(_log(1e-3, 5e-2), "lr"),
        "momentum": data.draw(st.floats(0.5, 0.95), "momentum"),
        **_schedule(data),
    }


def _adam_betas(data: st.DataObject) -> tuple[float, float]:
    beta1 = data.draw(st.one_of(st.just(0.0), st.floats(0.5, 0.95)), "beta1")
    return beta1, data.draw(_log(0.9, 0.9999), "beta2")


def _draw_prodigy(data: st.DataObject) -> dict[str, Any]:
    return {
        "lr": data.draw(st.sampled_from([1.0, 0.5]), "lr"),
        "betas": _adam_betas(data),
        "beta3": data.draw(st.one_of(st.none(), st.floats(0.5, 0.999)), "beta3"),
        "eps": data.draw(_log(1e-10, 1e-4), "eps"),
        "weight_decay": data.draw(st.sampled_from([0.0, 1e-3, 0.1]), "weight_decay"),
        "decouple": data.draw(st.booleans(), "decouple"),
        "use_bias_correction": data.draw(st.booleans(), "use_bias_correction"),
        "safeguard_warmup": data.draw(st.booleans(), "safeguard_warmup"),
        "d0": data.draw(_log(1e-7, 1e-3), "d0"),
        "d_coef": data.draw(_log(0.3, 3.0), "d_coef"),
        "growth_rate": data.draw(st.sampled_from([math.inf, 1.02, 2.0]), "growth_rate"),
        "slice_p": data.draw(st.integers(1, 3), "slice_p"),
    }


def _d_growth(data: st.DataObject) -> dict[str, Any]:
    return {
        "d0": data.draw(_log(1e-7, 1e-3), "d0"),
        "growth_rate": data.draw(st.sampled_from([math.inf, 1.02, 2.0]), "growth_rate"),
        "weight_decay": data.draw(st.sampled_from([0.0, 1e-3, 0.1]), "weight_decay"),
    }


def _draw_dadapt_adam(data: st.DataObject) -> dict[str, Any]:
    return {
        "lr": data.draw(st.sampled_from([1.0, 0.5]), "lr"),
        "betas": _adam_betas(data),
        "eps": data.draw(_log(1e-10, 1e-4), "eps"),
        "decouple": data.draw(st.booleans(), "decouple"),
        "use_bias_correction": data.draw(st.booleans(), "use_bias_correction"),
        **_d_growth(data),
    }


def _draw_dadapt_sgd(data: st.DataObject) -> dict[str, Any]:
    return {
        "lr": data.draw(st.sampled_from([1.0, 0.5]), "lr"),
        "momentum": data.draw(st.sampled_from([0.0, 0.5, 0.9]), "momentum"),
        **_d_growth(data),
    }


def _draw_dadapt_adagrad(data: st.DataObject) -> dict[str, Any]:
    return {**_draw_dadapt_sgd(data), "eps": data.draw(_log(1e-8, 1e-4), "eps")}


_SF_SCALARS = ("k", "weight_sum", "lr_max", "scheduled_lr")
_SF_SCHEDULE = {"weight_decay": 1e-3, "warmup_steps": 5, "r": 0.5, "weight_lr_power": 2.0}
PAIRS: dict[str, Pair] = {
    "schedulefree-adamw": Pair(
        adaptim.ScheduleFreeAdamW,
        schedulefree.AdamWScheduleFree,
        _draw_sf_adamw,
        _SF_SCALARS,
        {"lr": 1e-2, **_SF_SCHEDULE},
        train_eval=True,
    ),
    "schedulefree-sgd": Pair(
        adaptim.ScheduleFreeSGD,
        schedulefree.SGDScheduleFree,
        _draw_sf_sgd,
        _SF_SCALARS,
        {"lr": 1e-2, "momentum": 0.8, **_SF_SCHEDULE},
        train_eval=True,
    ),
    "prodigy": Pair(
        adaptim.Prodigy,
        prodigyopt.Prodigy,
        _draw_prodigy,
        ("d", "d_max", "d_numerator", "k"),
        {"weight_decay": 1e-2, "use_bias_correction": True, "slice_p": 2, "growth_rate": 1.5},
    ),
    "dadapt-adam": Pair(
        adaptim.DAdaptAdam,
        dadaptation.DAdaptAdam,
        _draw_dadapt_adam,
        ("d", "k", "numerator_weighted"),
        {"weight_decay": 1e-2, "decouple": True, "use_bias_correction": True},
    ),
    "dadapt-sgd": Pair(
        adaptim.DAdaptSGD,
        dadaptation.DAdaptSGD,
        _draw_dadapt_sgd,
        ("d", "k", "numerator_weighted", "g0_norm"),
        {"weight_decay": 1e-2, "momentum": 0.9, "growth_rate": 1.5},
    ),
    "dadapt-adagrad": Pair(
        adaptim.DAdaptAdaGrad,
        dadaptation.DAdaptAdaGrad,
        _draw_dadapt_adagrad,
        ("d", "k", "gsq_weighted", "sksq_weighted", "skl1"),
        {"weight_decay": 1e-2, "momentum": 0.5},
    ),
}


@dataclass
class Problem:
    curvatures: Params
    centers: Params
    start: Params

    @staticmethod
    def draw(shapes: list[tuple[int, ...]], dtype: torch.dtype, seed: int) -> Problem:
        gen = torch.Generator().manual_seed(seed)

        def each(make: Callable[[tuple[int, ...]], torch.Tensor]) -> Params:
            return [make(shape).to(dtype) for shape in shapes]

        curv = each(
            lambda s: torch.exp(torch.rand(s, generator=gen, dtype=torch.float64) * 4.6 - 2.3)
        )
        return Problem(
            curv,
            each(lambda s: torch.randn(s, generator=gen, dtype=torch.float64)),
            each(lambda s: torch.randn(s, generator=gen, dtype=torch.float64)),
        )

    def params(self) -> Params:
        return [p.clone().requires_grad_(True) for p in self.start]

    def set_grads(self, params: Params) -> None:
        with torch.no_grad():
            for p, a, c in zip(params, self.curvatures, self.centers, strict=True):
                p.grad = a * (p - c)


def _run(pair: Pair, problem: Problem, hp: dict[str, Any], steps: int) -> list[Any]:
    """Both optimizers through ``steps`` steps (eval/train switches on the way); returns both."""
    runs = []
    for cls in (pair.ours, pair.reference):
        params = problem.params()
        opt = cls(params, **hp)
        for step in range(steps):
            if pair.train_eval and step % 50 == 0:
                opt.train()  # type: ignore[attr-defined]
            problem.set_grads(params)
            opt.step()
            if pair.train_eval and step % 50 == 49:
                opt.eval()  # type: ignore[attr-defined]
        runs.append((params, opt))
    return runs


def assert_close(pair: Pair, runs: list[Any], dtype: torch.dtype) -> None:
    (ours, opt), (theirs, ref) = runs
    tol = TOLERANCE[dtype]
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert relative_error(a.detach(), b.detach()) <= tol, f"param {index}"
        mine, their_state = opt.state[a], ref.state[b]
        assert set(mine) == set(their_state)
        for key, value in their_state.items():
            if isinstance(value, torch.Tensor):
                assert relative_error(mine[key], value) <= tol, f"state {key} of param {index}"
            else:
                assert mine[key] == value, key
    for g, h in zip(opt.param_groups, ref.param_groups, strict=True):
        for key in pair.scalars:
            assert math.isclose(g[key], h[key], rel_tol=tol, abs_tol=1e-300), key


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", PAIRS)
@settings(max_examples=3, phases=NO_SHRINK)
@given(data=st.data())
def test_matches_reference(name: str, dtype: torch.dtype, data: st.DataObject) -> None:
    pair = PAIRS[name]
    shapes = data.draw(SHAPES, "shapes")
    problem = Problem.draw(shapes, dtype, data.draw(st.integers(0, 2**31), "seed"))
    assert_close(pair, _run(pair, problem, pair.draw(data), STEPS), dtype)


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
    whole = _run(pair, problem, hp, 60)
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
        twin.step([a * (w - c.numpy()) for w, a, c in _numpy_problem(problem, arrays)])
    for p, w in zip(params, arrays, strict=True):
        np.testing.assert_allclose(w, p.detach().numpy(), rtol=1e-10, atol=1e-12)
    for rate, twin_rate in zip(opt.effective_lr(), twin.effective_lr(), strict=True):  # type: ignore[attr-defined]
        np.testing.assert_allclose(twin_rate, rate.numpy(), rtol=1e-10)


def _numpy_problem(problem: Problem, arrays: list[np.ndarray]) -> Any:
    return zip(arrays, (a.numpy() for a in problem.curvatures), problem.centers, strict=True)


def _started(name: str, params: Params, **kwargs: Any) -> torch.optim.Optimizer:
    pair = PAIRS[name]
    opt = pair.ours(params, **pair.typical, **kwargs)
    if pair.train_eval:
        opt.train()  # type: ignore[attr-defined]
    return opt


@pytest.mark.parametrize("name", PAIRS)
def test_maximize_is_minimize_of_the_negated_gradient(name: str) -> None:
    problem = Problem.draw([(3,), (2, 2)], torch.float64, 5)
    ascending, descending = problem.params(), problem.params()
    up, down = _started(name, ascending, maximize=True), _started(name, descending)
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
    opt = _started(name, params)
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
    opt = _started(name, params, nonfinite="skip")
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
def test_steps_on_the_reference_path_without_warnings(name: str) -> None:
    """The engine fuses element-wise rules only; these step per tensor, silently, and say so."""
    problem = Problem.draw([(300,), (20, 20)], torch.float32, 4)  # large enough for the fast path
    params = problem.params()
    opt = _started(name, params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            problem.set_grads(params)
            opt.step()
    assert all(s.startswith("reference: ") for s in opt.fused_status())  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", PAIRS)
def test_numpy_state_dict_round_trip_continues_identically(name: str) -> None:
    pair = PAIRS[name]
    problem = Problem.draw([(3, 2), ()], torch.float64, 9)
    arrays = [p.detach().numpy().copy() for p in problem.start]
    cls = anp.LR_FREE_OPTIMIZERS[name]

    def grads(ws: list[np.ndarray]) -> list[np.ndarray]:
        return [a * (w - c.numpy()) for w, a, c in _numpy_problem(problem, ws)]

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
