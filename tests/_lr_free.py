"""The harness of the learning-rate-free parity tests: the reference pairs, their draws, the quadratic.

Both optimizers of a :class:`Pair` minimise the same random quadratic
``0.5 * sum(a * (p - c)**2)`` (curvatures ``a`` log-uniform in [0.1, 10]), so
each gradient depends on the parameters it is taken at; every parameter,
state tensor and group scalar must agree to :data:`~_parity.TOLERANCE`
(relative error of :mod:`_parity`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dadaptation
import numpy as np
import prodigyopt
import schedulefree
import torch
from _parity import TOLERANCE, relative_error
from hypothesis import Phase
from hypothesis import strategies as st

import adaptim

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


def run_pair(pair: Pair, problem: Problem, hp: dict[str, Any], steps: int) -> list[Any]:
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


def numpy_problem(problem: Problem, arrays: list[np.ndarray]) -> Any:
    return zip(arrays, (a.numpy() for a in problem.curvatures), problem.centers, strict=True)


def started(name: str, params: Params, **kwargs: Any) -> torch.optim.Optimizer:
    pair = PAIRS[name]
    opt = pair.ours(params, **pair.typical, **kwargs)
    if pair.train_eval:
        opt.train()  # type: ignore[attr-defined]
    return opt


def _draw_sgd_hd(data: st.DataObject) -> dict[str, Any]:
    momentum = data.draw(st.sampled_from([0.0, 0.5, 0.9]), "momentum")
    return {
        "lr": data.draw(_log(1e-3, 1e-1), "lr"),
        "momentum": momentum,
        "nesterov": momentum > 0 and data.draw(st.booleans(), "nesterov"),
        "weight_decay": data.draw(st.sampled_from([0.0, 1e-2]), "weight_decay"),
        "hypergrad_lr": data.draw(_log(1e-5, 1e-3), "hypergrad_lr"),
    }


def _draw_adam_hd(data: st.DataObject) -> dict[str, Any]:
    return {
        "lr": data.draw(_log(1e-3, 1e-1), "lr"),
        "betas": (data.draw(st.floats(0.5, 0.95)), data.draw(_log(0.9, 0.9999))),
        "weight_decay": data.draw(st.sampled_from([0.0, 1e-2]), "weight_decay"),
        "hypergrad_lr": data.draw(_log(1e-7, 1e-3), "hypergrad_lr"),
    }


def _draw_dog(data: st.DataObject) -> dict[str, Any]:
    return {
        "reps_rel": data.draw(_log(1e-6, 1e-3), "reps_rel"),
        "weight_decay": data.draw(st.sampled_from([0.0, 1e-3]), "weight_decay"),
        "init_eta": data.draw(st.sampled_from([None, 1e-3]), "init_eta"),
    }


#: name -> (class, hyperparameter draw, keeps train/eval)
GROUP_CASES: dict[str, tuple[type[torch.optim.Optimizer], Any, bool]] = {
    **{name: (pair.ours, pair.draw, pair.train_eval) for name, pair in PAIRS.items()},
    "sgd-hd": (adaptim.SGDHD, _draw_sgd_hd, False),
    "adam-hd": (adaptim.AdamHD, _draw_adam_hd, False),
    "dog": (adaptim.DoG, _draw_dog, False),
}
