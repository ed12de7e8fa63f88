"""DoG, LDoG and the polynomial-decay averager against ``dog-optimizer`` 1.0.3.

Hypothesis draws the problem (a quadratic or a small tanh network on fixed
data, so every gradient depends on the parameters), its dtype, the
hyperparameters and the seed; both packages then take :data:`~_parity.STEPS`
steps. Parameters and the reference's state (its ``state_dict``) must agree
to :data:`~_parity.TOLERANCE`. adaptim's LDoG computes in the parameters'
dtype with the reference's operations: bit for bit, on every draw. DoG adds
its group-wide sums as one float64 reduction (the reference: per-tensor sums
in the parameters' dtype, stacked), about one ulp apart per step; on a draw
where the reference's own run is chaotic (one ulp moved in the start moves
its result by tol/100 or more: a network at the edge of stability, about one
draw in eight) rounding, not the algorithm, decides the result, and the draw
is set aside.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from typing import Any

import dog
import numpy as np
import pytest
import torch
from _lr_free import NO_SHRINK, SHAPES, Problem
from _parity import STEPS, TOLERANCE, relative_error
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import adaptim
import adaptim.numpy as anp

PAIRS: dict[str, tuple[type[torch.optim.Optimizer], type[torch.optim.Optimizer]]] = {
    "dog": (adaptim.DoG, dog.DoG),
    "ldog": (adaptim.LDoG, dog.LDoG),
}


def _draw_hp(data: st.DataObject) -> dict[str, Any]:
    hp: dict[str, Any] = {
        # (c > 1 is the unstable regime the paper warns of: float32 rounding decides there)
        "lr": data.draw(st.sampled_from([1.0, 0.5, 0.8]), "lr"),
        "weight_decay": data.draw(st.sampled_from([0.0, 1e-3, 0.1]), "weight_decay"),
        "eps": data.draw(st.sampled_from([1e-8, 0.0, 1e-4]), "eps"),
    }
    if data.draw(st.booleans(), "init_eta given"):
        hp["init_eta"] = math.exp(data.draw(st.floats(math.log(1e-5), math.log(1e-1))))
    else:
        hp["reps_rel"] = math.exp(data.draw(st.floats(math.log(1e-7), math.log(1e-2))))
    return hp


Setup = tuple[list[torch.Tensor], Callable[[], None]]


def _quadratic(data: st.DataObject, dtype: torch.dtype, seed: int) -> Callable[[], Setup]:
    problem = Problem.draw(data.draw(SHAPES, "shapes"), dtype, seed)

    def build() -> Setup:
        params = problem.params()
        return params, lambda: problem.set_grads(params)

    return build


def _network(data: st.DataObject, dtype: torch.dtype, seed: int) -> Callable[[], Setup]:
    widths = data.draw(st.lists(st.integers(1, 6), min_size=2, max_size=4), "widths")
    bias = data.draw(st.booleans(), "bias")
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(16, widths[0], generator=gen, dtype=dtype)
    targets = torch.randn(16, widths[-1], generator=gen, dtype=dtype)

    def build() -> Setup:
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out, bias=bias), nn.Tanh()]
        model = nn.Sequential(*layers[:-1]).to(dtype)
        params = list(model.parameters())

        def set_grads() -> None:
            model.zero_grad()
            nn.functional.mse_loss(model(inputs), targets).backward()

        return params, set_grads

    return build


def _run(
    cls: type[torch.optim.Optimizer], setup: Setup, hp: dict[str, Any], steps: int
) -> torch.optim.Optimizer:
    params, set_grads = setup
    opt = cls(params, **hp)
    _steps(opt, set_grads, steps)
    return opt


def _steps(opt: torch.optim.Optimizer, set_grads: Callable[[], None], steps: int) -> None:
    for _ in range(steps):
        set_grads()
        opt.step()


def _assert_same(ours: Any, theirs: Any, tol: float) -> None:
    """Equal structure; tensors within ``tol`` relative error, other values equal."""
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor)
        assert relative_error(ours.detach().to(theirs.dtype), theirs.detach()) <= tol
    elif isinstance(theirs, dict):
        for key, value in theirs.items():
            _assert_same(ours[key], value, tol)
    elif isinstance(theirs, list | tuple):
        assert len(ours) == len(theirs)
        for mine, value in zip(ours, theirs, strict=True):
            _assert_same(mine, value, tol)
    else:
        assert ours == theirs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", PAIRS)
@settings(max_examples=4, phases=NO_SHRINK)
@given(data=st.data())
def test_matches_reference(name: str, dtype: torch.dtype, data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 2**31), "seed")
    kind = data.draw(st.sampled_from([_quadratic, _network]), "problem")
    build = kind(data, dtype, seed)
    hp = _draw_hp(data)
    (ours, _), (theirs, _) = setups = build(), build()
    opt, ref = (_run(cls, setup, hp, STEPS) for cls, setup in zip(PAIRS[name], setups, strict=True))
    tol = TOLERANCE[dtype]
    if name == "dog":
        # DoG's sums are added in another order (and in float64), so agreement
        # is only meaningful where the reference's own run is not chaotic: one
        # ulp moved in x₀ must move its result by less than tol / 100.
        nudged, _ = setup = build()
        with torch.no_grad():
            first = nudged[0].view(-1)
            first[0] = torch.nextafter(first[0], torch.tensor(math.inf, dtype=dtype))
        _run(PAIRS[name][1], setup, hp, STEPS)
        stable = all(relative_error(a, b) <= tol / 100 for a, b in zip(nudged, theirs, strict=True))
        assume(stable)
    for a, b in zip(ours, theirs, strict=True):
        assert relative_error(a.detach(), b.detach()) <= tol
    # the reference's whole state: init_buffer, rbar, G, eta per group, and _first_step
    _assert_same(opt.state_dict(), ref.state_dict(), tol)


@pytest.mark.parametrize("name", PAIRS)
@settings(max_examples=2, phases=NO_SHRINK)
@given(data=st.data())
def test_state_dict_moves_both_ways(name: str, data: st.DataObject) -> None:
    """Half the run in one package, the rest in the other: the whole run, in float64."""
    build = _quadratic(data, torch.float64, data.draw(st.integers(0, 99), "seed"))
    hp = _draw_hp(data)
    whole, _ = setup = build()
    _run(PAIRS[name][0], setup, hp, 60)
    ours, theirs = PAIRS[name]
    for first, second in ((ours, theirs), (theirs, ours), (ours, ours)):
        params, set_grads = setup = build()
        opt = _run(first, setup, hp, 30)
        resumed = second(params, **hp)
        resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
        _steps(resumed, set_grads, 30)
        for a, b in zip(params, whole, strict=True):
            assert relative_error(a.detach(), b.detach()) <= TOLERANCE[torch.float64]


@pytest.mark.parametrize("name", PAIRS)
def test_numpy_front_end_matches_torch(name: str) -> None:
    problem = Problem.draw([(3, 2), (4,), ()], torch.float64, 3)
    hp = {"weight_decay": 1e-2, "reps_rel": 1e-4}
    params = problem.params()
    opt = PAIRS[name][0](params, **hp)
    arrays = [p.detach().numpy().copy() for p in params]
    twin = anp.LR_FREE_OPTIMIZERS[name](arrays, **hp)
    curvatures = [a.numpy() for a in problem.curvatures]
    centers = [c.numpy() for c in problem.centers]
    for _ in range(40):
        problem.set_grads(params)
        opt.step()
        twin.step([a * (w - c) for w, a, c in zip(arrays, curvatures, centers, strict=True)])
    for p, w in zip(params, arrays, strict=True):
        np.testing.assert_allclose(w, p.detach().numpy(), rtol=1e-10, atol=1e-12)
    for rate, twin_rate in zip(opt.effective_lr(), twin.effective_lr(), strict=True):  # type: ignore[attr-defined]
        np.testing.assert_allclose(twin_rate, rate.numpy(), rtol=1e-10)


@pytest.mark.parametrize("name", PAIRS)
def test_effective_lr_is_the_last_step_size(name: str) -> None:
    problem = Problem.draw([(3,), (2, 2)], torch.float64, 5)
    params = problem.params()
    opt = PAIRS[name][0](params)
    assert opt.effective_lr() == [None, None]  # type: ignore[attr-defined]
    for _ in range(5):
        problem.set_grads(params)
        opt.step()
    etas = opt.state_dict()["param_groups"][0]["eta"]
    for rate, eta in zip(opt.effective_lr(), etas, strict=True):  # type: ignore[attr-defined]
        torch.testing.assert_close(rate, torch.full_like(rate, float(eta)), rtol=1e-15, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, r"Invalid lr: 0\.0"),
        ({"reps_rel": 0.0}, r"Invalid reps_rel: 0\.0"),
        ({"init_eta": -1.0}, r"Invalid init_eta: -1\.0"),
        ({"weight_decay": -0.1}, r"Invalid weight_decay: -0\.1"),
        ({"eps": -1e-8}, r"Invalid eps: -1e-08"),
    ],
)
@pytest.mark.parametrize("name", PAIRS)
def test_bad_arguments_are_refused_with_their_name(
    name: str, kwargs: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        PAIRS[name][0]([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("name", PAIRS)
def test_zero_first_gradient_without_eps_is_refused_before_anything_changes(name: str) -> None:
    """The reference asserts G > 0; adaptim says which argument to change, and moves nothing."""
    a = torch.ones(3, requires_grad=True)
    opt = PAIRS[name][0]([a], eps=0.0)
    a.grad = torch.zeros(3)
    with pytest.raises(ValueError, match=r"Invalid eps: 0\.0.*Use eps > 0"):
        opt.step()
    assert torch.equal(a, torch.ones(3))
    a.grad = torch.ones(3)  # the next step is still the first
    opt.step()
    assert opt.state_dict()["state"] == {"_first_step": False}
    torch.testing.assert_close(opt.state_dict()["param_groups"][0]["init_buffer"][0], torch.ones(3))


# -- the polynomial-decay averager ------------------------------------------------------
def _model(seed: int, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)).to(dtype)


@settings(max_examples=6, phases=NO_SHRINK)
@given(
    gamma=st.sampled_from([0.0, 1.0, 8.0]) | st.floats(0.0, 20.0),
    seed=st.integers(0, 99),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_averager_matches_reference(gamma: float, seed: int, dtype: torch.dtype) -> None:
    """Bit for bit, batch norm's statistics and counter included, and its state_dict both ways."""
    model = _model(seed, dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ours, theirs = (
        adaptim.PolynomialAverager(model, gamma),
        dog.PolynomialDecayAverager(model, gamma),
    )
    inputs = torch.randn(8, 4, dtype=dtype)
    for step in range(30):
        opt.zero_grad()
        model(inputs * (1 + step / 10)).square().mean().backward()
        opt.step()
        ours.step()
        theirs.step()
        if step == 14:  # halfway, each continues from the other's state
            mine, its = copy.deepcopy(ours.state_dict()), copy.deepcopy(theirs.state_dict())
            ours.load_state_dict(its)
            theirs.load_state_dict(mine)
    assert ours.t == theirs.t == 31
    averaged, reference = ours.averaged_model.state_dict(), theirs.averaged_model.state_dict()
    assert averaged.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(averaged[key], value), key
    assert ours.base_model is model
    ours.reset()
    ours.step()  # the first step after a reset takes the model as it is
    for key, value in model.state_dict().items():
        assert torch.equal(ours.averaged_model.state_dict()[key], value), key


def test_averager_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"Invalid gamma: -1\.0.*>= 0"):
        adaptim.PolynomialAverager(nn.Linear(2, 2), gamma=-1.0)
    with pytest.raises(TypeError, match=r"Invalid model: list"):
        adaptim.PolynomialAverager([torch.zeros(2)])  # type: ignore[arg-type]
    averager = adaptim.PolynomialAverager(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"expected a mapping with 't' and 'av_model'"):
        averager.load_state_dict({"t": 3})


@settings(max_examples=6, phases=NO_SHRINK)
@given(
    gamma=st.sampled_from([0.0, 1.0, 8.0]) | st.floats(0.0, 20.0),
    seed=st.integers(0, 99),
    split=st.integers(1, 29),
)
def test_numpy_averager_matches_the_reference(gamma: float, seed: int, split: int) -> None:
    """In float64 over 30 DoG steps, through a state_dict round trip at ``split``."""
    rng = np.random.default_rng(seed)
    start = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    targets = [rng.standard_normal(a.shape) for a in start]
    tensors = [torch.tensor(a, requires_grad=True) for a in start]
    reference_optimizer = dog.DoG(tensors)
    reference = dog.PolynomialDecayAverager(nn.ParameterList(tensors), gamma)
    arrays = [a.copy() for a in start]
    optimizer = anp.DoG(arrays)
    averager = anp.PolynomialAverager(arrays, gamma)
    for step in range(30):
        for t, c in zip(tensors, targets, strict=True):
            t.grad = (t.detach() - torch.from_numpy(c)) * (1 + step / 10)
        reference_optimizer.step()
        reference.step()
        optimizer.step([(a - c) * (1 + step / 10) for a, c in zip(arrays, targets, strict=True)])
        averager.step()
        if step + 1 == split:
            saved = averager.state_dict()
            averager = anp.PolynomialAverager(arrays, gamma)
            averager.load_state_dict(saved)
    assert averager.t == reference.t == 31
    for ours, theirs in zip(averager.averaged, reference.averaged_model.parameters(), strict=True):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_numpy_averager_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"Invalid gamma: -1\.0.*>= 0"):
        anp.PolynomialAverager([np.zeros(2)], gamma=-1.0)
    with pytest.raises(TypeError, match=r"Invalid params\[0\]: ndarray of dtype int64"):
        anp.PolynomialAverager([np.zeros(2, dtype=np.int64)])
    averager = anp.PolynomialAverager([np.zeros(2)])
    with pytest.raises(ValueError, match=r"averages of shapes \[\(3,\)\]"):
        averager.load_state_dict({"t": 2, "averaged": [np.zeros(3)]})


@pytest.mark.parametrize("name", PAIRS)
def test_a_tensor_without_gradient_waits_and_survives_a_checkpoint(name: str) -> None:
    """The reference fails on a missing gradient; adaptim starts such a tensor at its first one.

    Its ``state_dict`` still has the reference's layout (x₀ of the waiting
    tensor: where it is now), and a run resumed from it continues as the
    uninterrupted run does once the tensor gets gradients.
    """
    problem = Problem.draw([(3,), (2, 2)], torch.float64, 11)
    runs = []
    for resume in (False, True):
        params = problem.params()
        opt = PAIRS[name][0](params, reps_rel=1e-3)
        for step in range(20):
            problem.set_grads(params)
            if step < 10:
                params[1].grad = None
            opt.step()
            if step == 5:
                assert torch.equal(params[1], problem.start[1])  # no gradient: it waits
                if resume:
                    saved = copy.deepcopy(opt.state_dict())
                    assert len(saved["param_groups"][0]["init_buffer"]) == 2
                    opt = PAIRS[name][0](params, reps_rel=1e-3)
                    opt.load_state_dict(saved)
        runs.append(params)
    for a, b in zip(*runs, strict=True):
        assert relative_error(a.detach(), b.detach()) <= 1e-14
    assert not torch.equal(runs[0][1], problem.start[1])


@pytest.mark.parametrize("name", ["DoG", "LDoG"])
def test_a_wrong_argument_names_the_class_the_user_called(name: str) -> None:
    """Python's TypeError names the ``__init__`` it reached: it said
    ``_DistanceOverGradients.__init__()``, a private base the user never wrote."""
    param = torch.zeros(2, requires_grad=True)
    with pytest.raises(TypeError, match=rf"^{name}\.__init__\(\) got an unexpected keyword"):
        getattr(adaptim, name)([param], foo=1)
    with pytest.raises(TypeError, match=rf"^{name}\.__init__\(\) takes from 2 to 7 positional"):
        getattr(adaptim, name)([param], 1e-6, 1.0, 0.0, 1e-8, None, 5)


def test_a_subclass_keeps_the_init_its_mixin_gives_it() -> None:
    """The per-class ``__init__`` (for the error's name) replaces only DoG's own: a subclass
    whose MRO puts another ``__init__`` first (the lab's ``AveragedDoG``) keeps it."""

    class Counting:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.built = True
            super().__init__(*args, **kwargs)

    class CountingDoG(Counting, adaptim.DoG):
        pass

    param = torch.nn.Parameter(torch.randn(3))
    optimizer = CountingDoG([param])
    assert optimizer.built
    param.grad = torch.randn(3)
    optimizer.step()
