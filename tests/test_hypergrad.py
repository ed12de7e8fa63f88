"""SGD-HD, SGDN-HD and Adam-HD against the paper (Baydin et al. 2018, Algorithms 4 to 6).

The reference implementation is unmaintained and not on the package index,
so the oracle is :class:`Paper`, a plain float64 NumPy transcription of the
paper's algorithm boxes written differently from adaptim's rules: one flat
vector per param group (the paper's :math:`\\theta`), the derivative
:math:`\\nabla_\\alpha u` kept as a vector, :math:`\\hat m` and :math:`\\hat v`
formed as printed. Both minimise a random quadratic (see :mod:`_lr_free`), so
every gradient depends on the parameters it is taken at. With
``hypergrad_lr=0`` the optimizers must be torch.optim's SGD and Adam exactly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from _lr_free import NO_SHRINK, SHAPES, Problem
from _parity import STEPS, TOLERANCE, relative_error
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim
import adaptim.numpy as anp

Optimizers = type[adaptim.SGDHD] | type[adaptim.AdamHD]


def _log(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(math.log(low), math.log(high)).map(math.exp)


# -- the paper, transcribed ----------------------------------------------------------------
@dataclass
class Paper:
    """One param group run by the paper's algorithm box, on the concatenation of its tensors."""

    name: str
    hp: dict[str, Any]
    theta: np.ndarray
    alpha: float = field(init=False)
    t: int = 0

    def __post_init__(self) -> None:
        self.alpha = float(self.hp["lr"])
        zeros = np.zeros_like(self.theta)
        self.grad_u, self.v, self.m = zeros.copy(), zeros.copy(), zeros.copy()

    def step(self, gradient: np.ndarray) -> None:
        hp, self.t = self.hp, self.t + 1
        g = gradient + hp["weight_decay"] * self.theta
        h = float(g @ self.grad_u)  # h_t = g_t . grad_alpha u_{t-1}
        self.alpha = self.alpha - hp["hypergrad_lr"] * h
        if self.name == "adam-hd":  # Algorithm 6
            beta1, beta2 = hp["betas"]
            self.m = beta1 * self.m + (1 - beta1) * g
            self.v = beta2 * self.v + (1 - beta2) * g * g
            m_hat = self.m / (1 - beta1**self.t)
            v_hat = self.v / (1 - beta2**self.t)
            direction = m_hat / (np.sqrt(v_hat) + hp["eps"])
        elif hp["momentum"] == 0:  # Algorithm 4
            direction = g
        else:  # Algorithm 5 (Nesterov), or heavy ball
            mu = hp["momentum"]
            self.v = mu * self.v + g
            direction = g + mu * self.v if hp["nesterov"] else self.v
        u = -self.alpha * direction
        self.grad_u = -direction
        self.theta = self.theta + u


def _draw_sgd_hd(data: st.DataObject) -> dict[str, Any]:
    momentum = data.draw(st.sampled_from([0.0, 0.5, 0.9]), "momentum")
    return {
        "lr": data.draw(_log(1e-4, 5e-2), "lr"),
        "momentum": momentum,
        "nesterov": momentum > 0 and data.draw(st.booleans(), "nesterov"),
        "weight_decay": data.draw(st.sampled_from([0.0, 1e-3, 0.1]), "weight_decay"),
        "hypergrad_lr": data.draw(_log(1e-3, 0.3), "hypergrad_lr"),  # relative: see _scaled
    }


def _draw_adam_hd(data: st.DataObject) -> dict[str, Any]:
    betas = (data.draw(st.floats(0.0, 0.95), "beta1"), data.draw(_log(0.9, 0.9999), "beta2"))
    return {
        "lr": data.draw(_log(1e-4, 1e-1), "lr"),
        "betas": betas,
        "eps": data.draw(_log(1e-10, 1e-3), "eps"),
        "weight_decay": data.draw(st.sampled_from([0.0, 1e-3, 0.1]), "weight_decay"),
        "hypergrad_lr": data.draw(_log(1e-3, 0.3), "hypergrad_lr"),  # relative: see _scaled
    }


def _scaled(name: str, hp: dict[str, Any], gradient: np.ndarray) -> dict[str, Any]:
    """The drawn ``hypergrad_lr`` κ made absolute: one step of α moves it by about κ·α₀.

    h is about ‖g‖² for SGD-HD and ‖g‖₁ for Adam-HD, which vary by orders of
    magnitude with the drawn shapes and curvatures; β = κ·α₀/‖g₀‖ keeps every
    run in the regime where α adapts without blowing up.
    """
    size = float(gradient @ gradient) if name == "sgd-hd" else float(np.abs(gradient).sum())
    return {**hp, "hypergrad_lr": hp["hypergrad_lr"] * hp["lr"] / size}


DRAWS: dict[str, Callable[[st.DataObject], dict[str, Any]]] = {
    "sgd-hd": _draw_sgd_hd,
    "adam-hd": _draw_adam_hd,
}
CLASSES: dict[str, Optimizers] = {"sgd-hd": adaptim.SGDHD, "adam-hd": adaptim.AdamHD}


def _split(problem: Problem, groups: int) -> list[list[int]]:
    """Tensor indices per param group: the first tensor alone, then the rest (when there are two)."""
    count = len(problem.start)
    return [[0], list(range(1, count))] if groups == 2 and count > 1 else [list(range(count))]


def _flat(tensors: list[torch.Tensor], indices: list[int]) -> np.ndarray:
    return np.concatenate([tensors[i].detach().numpy().ravel() for i in indices])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", DRAWS)
@settings(max_examples=6, phases=NO_SHRINK)
@given(data=st.data())
def test_matches_the_papers_algorithm(name: str, dtype: torch.dtype, data: st.DataObject) -> None:
    """Every parameter and every group's α after 200 steps, one or two groups with their own settings.

    The gradient is the quadratic's plus a fixed noise sequence (the same for
    both), as in stochastic training: at the exact optimum of a noiseless
    quadratic Adam's step m̂/√v̂ turns sign-like, and any one-ulp difference
    between two correct formulations then grows about fourfold per step.
    """
    problem = Problem.draw(data.draw(SHAPES, "shapes"), dtype, data.draw(st.integers(0, 2**31)))
    split = _split(problem, data.draw(st.integers(1, 2), "groups"))
    noise = np.random.default_rng(data.draw(st.integers(0, 2**31), "noise seed"))
    sigma = data.draw(_log(0.1, 1.0), "noise scale")
    params = problem.params()
    problem.set_grads(params)
    first = [_flat([p.grad for p in params], s) for s in split]  # type: ignore[misc]
    hps = [_scaled(name, DRAWS[name](data), g) for g in first]
    ours = CLASSES[name](
        [{"params": [params[i] for i in s], **hp} for s, hp in zip(split, hps, strict=True)]
    )
    papers = [Paper(name, hp, _flat(problem.start, s)) for hp, s in zip(hps, split, strict=True)]
    curvature = [_flat(problem.curvatures, s) for s in split]
    center = [_flat(problem.centers, s) for s in split]
    for _ in range(STEPS):
        problem.set_grads(params)
        for paper, s, a, c in zip(papers, split, curvature, center, strict=True):
            xi = (sigma * noise.standard_normal(a.shape)).astype(a.dtype)
            paper.step(a * (paper.theta - c) + xi)
            parts = np.split(xi, np.cumsum([params[i].numel() for i in s])[:-1])
            for i, part in zip(s, parts, strict=True):
                params[i].grad += torch.from_numpy(part.reshape(params[i].shape))  # type: ignore[operator]
        ours.step()
    tol = TOLERANCE[dtype]
    for paper, s, group, hp in zip(papers, split, ours.param_groups, hps, strict=True):
        assert np.isfinite(paper.theta).all()  # the drawn ranges keep the paper's runs finite
        assert (
            relative_error(torch.from_numpy(_flat(params, s)), torch.from_numpy(paper.theta)) <= tol
        )
        assert math.isclose(group["lr"], paper.alpha, rel_tol=tol), (group["lr"], paper.alpha)
        assert group["lr"] != hp["lr"]  # the hypergradient did move α


@pytest.mark.parametrize(
    ("name", "reference", "extra"),
    [
        ("sgd-hd", torch.optim.SGD, {"momentum": 0.0}),
        ("sgd-hd", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
        ("sgd-hd", torch.optim.SGD, {"momentum": 0.9, "weight_decay": 0.01}),
        ("adam-hd", torch.optim.Adam, {"weight_decay": 0.01}),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_without_hypergradient_is_torch_optim_exactly(
    name: str, reference: type[torch.optim.Optimizer], extra: dict[str, Any], dtype: torch.dtype
) -> None:
    problem = Problem.draw([(3, 4), (5,)], dtype, 11)
    ours, theirs = problem.params(), problem.params()
    mine = CLASSES[name](ours, lr=0.05, hypergrad_lr=0.0, **extra)
    torch_opt = reference(theirs, lr=0.05, foreach=False, **extra)
    for _ in range(50):
        problem.set_grads(ours)
        problem.set_grads(theirs)
        mine.step()
        torch_opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert mine.param_groups[0]["lr"] == 0.05


@pytest.mark.parametrize("name", DRAWS)
def test_first_step_runs_at_the_initial_lr_then_alpha_moves(name: str) -> None:
    p = torch.ones(3, requires_grad=True)
    opt = CLASSES[name]([p], lr=0.1, hypergrad_lr=1e-3)
    p.grad = torch.ones(3)
    opt.step()
    assert opt.param_groups[0]["lr"] == 0.1  # grad_alpha u_0 = 0
    p.grad = torch.ones(3)
    opt.step()
    assert opt.param_groups[0]["lr"] > 0.1  # the same direction twice: the rate grows
    rates = opt.effective_lr()
    if name == "sgd-hd":
        assert torch.equal(rates[0], torch.full((3,), opt.param_groups[0]["lr"]))
    else:  # Adam's factor on m-hat, with the current alpha
        assert rates[0] is not None and torch.all(rates[0] > 0)


@pytest.mark.parametrize("name", DRAWS)
def test_each_param_group_learns_its_own_rate(name: str) -> None:
    problem = Problem.draw([(4,), (4,)], torch.float64, 2)
    params = problem.params()
    opt = CLASSES[name]([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.0}])
    for _ in range(20):
        problem.set_grads(params)
        opt.step()
    first, second = (g["lr"] for g in opt.param_groups)
    assert first != second and second > 0  # starting from 0, the rate rises (the README's claim)


@pytest.mark.parametrize("name", DRAWS)
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    problem = Problem.draw([(3, 2), (4,)], torch.float64, 5)
    params = problem.params()
    hp: dict[str, Any] = {"momentum": 0.9, "nesterov": True, "hypergrad_lr": 1e-5}
    opt = CLASSES[name](params, **(hp if name == "sgd-hd" else {"hypergrad_lr": 1e-4}))
    for _ in range(10):
        problem.set_grads(params)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    assert saved["param_groups"][0]["lr"] == opt.param_groups[0]["lr"] != 1e-3
    twins = [p.detach().clone().requires_grad_(True) for p in params]
    resumed = CLASSES[name](twins)  # the hyperparameters come with the state_dict
    resumed.load_state_dict(saved)
    for _ in range(10):
        problem.set_grads(params)
        problem.set_grads(twins)
        opt.step()
        resumed.step()
    assert all(torch.equal(a, b) for a, b in zip(params, twins, strict=True))
    assert resumed.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


@pytest.mark.parametrize("name", DRAWS)
def test_numpy_front_end_matches_torch(name: str) -> None:
    problem = Problem.draw([(3, 2), (4,), ()], torch.float64, 3)
    hp: dict[str, Any] = {"momentum": 0.5, "nesterov": True, "hypergrad_lr": 1e-5}
    hp = hp if name == "sgd-hd" else {"hypergrad_lr": 1e-4}
    params = problem.params()
    opt = CLASSES[name](params, weight_decay=1e-2, **hp)
    arrays = [p.detach().numpy().copy() for p in params]
    twin = anp.LR_FREE_OPTIMIZERS[name](arrays, weight_decay=1e-2, **hp)
    for _ in range(40):
        problem.set_grads(params)
        opt.step()
        twin.step(
            [
                a.numpy() * (w - c.numpy())
                for w, a, c in zip(arrays, problem.curvatures, problem.centers, strict=True)
            ]
        )
    for p, w in zip(params, arrays, strict=True):
        np.testing.assert_allclose(w, p.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert twin.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-10)
    for rate, twin_rate in zip(opt.effective_lr(), twin.effective_lr(), strict=True):
        assert rate is not None and twin_rate is not None
        np.testing.assert_allclose(twin_rate, rate.numpy(), rtol=1e-10)
    saved = copy.deepcopy(twin.state_dict())
    resumed = anp.LR_FREE_OPTIMIZERS[name]([a.copy() for a in arrays], weight_decay=1e-2, **hp)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["lr"] == twin.param_groups[0]["lr"]


@pytest.mark.parametrize("name", DRAWS)
def test_maximize_and_frozen_and_nonfinite(name: str) -> None:
    problem = Problem.draw([(3,), (2, 2)], torch.float64, 7)
    up, down = problem.params(), problem.params()
    ascending = CLASSES[name](up, maximize=True, nonfinite="skip")
    descending = CLASSES[name](down)
    for _ in range(10):
        problem.set_grads(down)
        for p, q in zip(up, down, strict=True):
            p.grad = -q.grad  # type: ignore[operator]
        ascending.step()
        descending.step()
    assert all(torch.equal(p, q) for p, q in zip(up, down, strict=True))
    assert ascending.param_groups[0]["lr"] == descending.param_groups[0]["lr"]
    before = copy.deepcopy(ascending.state_dict()), [p.detach().clone() for p in up]
    problem.set_grads(up)
    up[0].grad[0] = math.nan  # type: ignore[index]
    up[1].grad = None
    ascending.step()  # skipped: nothing moves, alpha included
    assert ascending.skipped_steps == 1
    assert str(ascending.state_dict()) == str(before[0])
    assert all(torch.equal(p, q) for p, q in zip(up, before[1], strict=True))


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (adaptim.SGDHD, {"hypergrad_lr": -1e-3}, r"Invalid hypergrad_lr: -0.001; allowed: 0 <="),
        (adaptim.AdamHD, {"hypergrad_lr": math.nan}, r"Invalid hypergrad_lr: nan"),
        (adaptim.SGDHD, {"lr": -0.1}, r"Invalid lr: -0.1"),
        (adaptim.SGDHD, {"nesterov": True}, r"nesterov=True requires momentum > 0"),
        (adaptim.SGDHD, {"momentum": 1.0}, r"Invalid momentum: 1.0; allowed: 0 <= momentum < 1"),
        (adaptim.AdamHD, {"betas": (0.9, 1.0)}, r"Invalid beta2: 1.0"),
        (adaptim.AdamHD, {"eps": -1.0}, r"Invalid eps: -1.0"),
    ],
)
def test_bad_hyperparameters_are_refused(
    cls: Optimizers, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cls([torch.zeros(2, requires_grad=True)], **kwargs)
    with pytest.raises(ValueError, match=message):
        anp.LR_FREE_OPTIMIZERS[cls.algorithm.name]([np.zeros(2)], **kwargs)
