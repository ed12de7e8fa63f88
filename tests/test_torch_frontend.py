"""The PyTorch front-end as a drop-in for torch.optim.

The nine algorithms torch.optim also has must take torch's arguments, keep
torch's param-group keys and ``state_dict`` layout (so checkpoints move both
ways), work with torch's LR schedulers, closures, named parameters, complex
and channels-last parameters and sparse gradients, and follow torch.optim's
trajectory. Every algorithm, LARS and LAMB included, must resume from a
checkpoint bit for bit, and handle non-finite gradients as its ``nonfinite``
policy says.

Trajectories are compared in float64 with a relative tolerance of 1e-12;
resumption is compared with ``torch.equal``.
"""

from __future__ import annotations

import copy
import inspect
import io
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

import adaptim
from adaptim.algorithms import ALGORITHMS

F64 = torch.float64
RTOL = 1e-12
ATOL = 1e-15  # for entries that pass through zero

#: The algorithms torch.optim also has; LARS and LAMB are adaptim's own.
SHARED = ("sgd", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "adamax", "nadam", "radam")
ALL = tuple(adaptim.OPTIMIZERS)

#: Non-default settings that switch on every piece of state and every branch.
OPTIONS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    "adagrad": {
        "lr": 0.1,
        "lr_decay": 0.01,
        "initial_accumulator_value": 0.1,
        "weight_decay": 0.01,
    },
    "rmsprop": {"lr": 0.01, "centered": True, "momentum": 0.9, "weight_decay": 0.01},
    "adadelta": {"lr": 0.5, "rho": 0.8, "weight_decay": 0.01, "maximize": True},
    "adam": {"lr": 0.01, "amsgrad": True, "weight_decay": 0.01},
    "adamw": {"lr": 0.01, "amsgrad": True, "betas": (0.8, 0.99)},
    "adamax": {"lr": 0.01, "weight_decay": 0.01, "maximize": True},
    "nadam": {
        "lr": 0.01,
        "weight_decay": 0.01,
        "decoupled_weight_decay": True,
        "momentum_decay": 0.01,
    },
    "radam": {"lr": 0.01, "weight_decay": 0.01, "decoupled_weight_decay": True},
    "lars": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01, "trust_clip": True},
    "lamb": {"lr": 0.01, "weight_decay": 0.01, "weight_norm_clip": (0.1, 5.0)},
}
# -- issue 16 (twins): torch.optim's other algorithms
OPTIONS.update(
    {
        "rprop": {"lr": 0.01, "etas": (0.4, 1.3), "step_sizes": (1e-5, 1.0)},
        "asgd": {"lr": 0.05, "lambd": 1e-3, "t0": 3, "weight_decay": 0.01},
        "adafactor": {"lr": 0.05, "beta2_decay": -0.6, "d": 1.5, "weight_decay": 0.01},
        "lion": {"lr": 0.01, "betas": (0.8, 0.95), "weight_decay": 0.1},
        "adabelief": {"lr": 0.01, "eps": 1e-8, "eps_root": 1e-10, "nesterov": True},
        "yogi": {"lr": 0.01, "initial_accumulator_value": 0.1, "bias_correction": False},
        "adan": {"lr": 0.01, "weight_decay": 0.01, "proximal_weight_decay": True},
        "novograd": {"lr": 0.01, "weight_decay": 0.01, "eps_root": 1e-8},
        "sm3": {"lr": 0.01, "momentum": 0.5, "eps": 1e-10},
    }
)


def adaptim_class(name: str) -> type[adaptim.Optimizer]:
    return adaptim.OPTIMIZERS[name]


def torch_class(name: str) -> type[torch.optim.Optimizer]:
    return getattr(torch.optim, adaptim.OPTIMIZERS[name].__name__)


# -- a small problem and its gradients -------------------------------------------------------


def make_params(dtype: torch.dtype = F64, seed: int = 0) -> list[torch.Tensor]:
    """A weight matrix and a bias: the state of both layouts gets exercised."""
    generator = torch.Generator().manual_seed(seed)
    real = dtype.to_real() if dtype.is_complex else dtype
    shapes = [(4, 3), (3,)]
    params = []
    for shape in shapes:
        value = torch.randn(shape, generator=generator, dtype=real)
        if dtype.is_complex:
            value = torch.complex(value, torch.randn(shape, generator=generator, dtype=real))
        params.append(value.requires_grad_())
    return params


def clone_params(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_(p.requires_grad) for p in params]


def loss_at(params: Sequence[torch.Tensor], t: int) -> torch.Tensor:
    """A non-linear regression loss on batch ``t``; complex parameters get a real loss."""
    weight, bias = params
    generator = torch.Generator().manual_seed(1000 + t)
    x = torch.randn(8, 4, generator=generator, dtype=F64).to(weight.dtype)
    y = torch.randn(8, 3, generator=generator, dtype=F64).to(weight.dtype)
    out = x @ weight + bias
    if weight.is_complex():
        return (out - y).abs().square().mean()
    return (torch.tanh(out) - y).square().mean()


def train(
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    steps: int,
    start: int = 0,
    scheduler: Any = None,
) -> list[list[torch.Tensor]]:
    """Run ``steps`` steps on batches ``start, start+1, ...``; the parameters after each."""
    trajectory = []
    for t in range(start, start + steps):
        optimizer.zero_grad()
        loss_at(params, t).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        trajectory.append([p.detach().clone() for p in params])
    return trajectory


def assert_close(actual: Any, expected: Any, **kwargs: Any) -> None:
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, **kwargs)


def assert_trajectories_close(actual: list[Any], expected: list[Any]) -> None:
    assert len(actual) == len(expected)
    for t, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert_close(a, e, msg=lambda m, t=t: f"step {t}: {m}")


def dense(value: Any) -> Any:
    return value.to_dense() if isinstance(value, torch.Tensor) and value.is_sparse else value


def assert_states_close(actual: dict[Any, Any], expected: dict[Any, Any], exact: bool) -> None:
    """Per-parameter state: same keys, same dtypes, values equal (``exact``) or close."""
    assert actual.keys() == expected.keys()
    for param, entries in expected.items():
        assert actual[param].keys() == entries.keys(), param
        for key, value in entries.items():
            got, value = dense(actual[param][key]), dense(value)
            assert got.dtype == value.dtype, (key, got.dtype, value.dtype)
            if exact:
                assert torch.equal(got, value), key
            else:
                assert_close(got, value, equal_nan=True)


def assert_same_hyperparameters(ours: adaptim.Optimizer, theirs: torch.optim.Optimizer) -> None:
    """Every group key torch.optim has is in adaptim's group, with the same value."""
    assert len(ours.param_groups) == len(theirs.param_groups)
    for group, expected in zip(ours.param_groups, theirs.param_groups, strict=True):
        for key, value in expected.items():
            if key != "params":
                assert group[key] == value, key


def serialized(state_dict: dict[str, Any], via: str) -> dict[str, Any]:
    if via == "deepcopy":
        return copy.deepcopy(state_dict)
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def against(name: str) -> Callable[..., torch.optim.Optimizer]:
    """The reference to compare adaptim with: torch.optim where it has the algorithm."""
    return torch_class(name) if name in SHARED else adaptim_class(name)


# -- signatures, groups and defaults ---------------------------------------------------------


def signature_rows(function: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("name", SHARED)
def test_signature_matches_torch(name: str) -> None:
    ours = signature_rows(adaptim_class(name).__init__)
    theirs = signature_rows(torch_class(name).__init__)
    torch_names = {row[0] for row in theirs}
    extra = [row for row in ours if row[0] == "nonfinite"]
    assert extra == [("nonfinite", inspect.Parameter.KEYWORD_ONLY, "ignore")]
    if "fused" not in torch_names:  # adaptim's fused path exists for every algorithm
        assert ("fused", inspect.Parameter.KEYWORD_ONLY, None) in ours
    # flavor and the options where frameworks differ come after torch's arguments
    own = {
        "nonfinite", "flavor", "fused", "state_dtype", "state_bits",
        *(set(adaptim.OPTIMIZERS[name].algorithm.defaults) - torch_names),
    }  # fmt: skip
    own_rows = [row for row in ours if row[0] in own - torch_names]
    assert all(kind is inspect.Parameter.KEYWORD_ONLY for _, kind, _ in own_rows)
    assert [row for row in ours if row[0] not in own - torch_names] == theirs


@pytest.mark.parametrize("name", SHARED)
def test_param_group_has_every_torch_key_and_value(name: str) -> None:
    params = make_params()
    ours = adaptim_class(name)(params).param_groups[0]
    theirs = torch_class(name)(params).param_groups[0]
    assert ours["params"] == theirs["params"]
    for key, value in theirs.items():
        assert key in ours, key
        assert ours[key] == value, key


LAYOUT_SETTINGS = [
    pytest.param(name, settings, id=f"{name}-{label}")
    for name in SHARED
    for label, settings in [("defaults", {}), ("options", OPTIONS[name])]
]


@pytest.mark.parametrize(("name", "settings"), LAYOUT_SETTINGS)
def test_state_layout_matches_torch(name: str, settings: dict[str, Any]) -> None:
    """Same parameters in ``state``, same keys, dtypes, shapes and memory layouts."""
    ours_params, theirs_params = make_params(), make_params()
    ours = adaptim_class(name)(ours_params, **settings)
    theirs = torch_class(name)(theirs_params, **settings)
    train(ours, ours_params, 2)
    train(theirs, theirs_params, 2)
    ours_state, theirs_state = ours.state_dict()["state"], theirs.state_dict()["state"]
    assert ours_state.keys() == theirs_state.keys()
    for index, entries in theirs_state.items():
        assert ours_state[index].keys() == entries.keys()
        for key, value in entries.items():
            mine = ours_state[index][key]
            assert (mine.dtype, mine.shape, mine.stride()) == (
                value.dtype,
                value.shape,
                value.stride(),
            ), key


@pytest.mark.parametrize("name", ALL)
def test_defaults_are_the_algorithm_defaults(name: str) -> None:
    optimizer = adaptim_class(name)(make_params())
    expected = ALGORITHMS[name].defaults
    group = optimizer.param_groups[0]
    # adaptim-only options at torch's values stay implicit: read through group_value.
    assert {k: optimizer.group_value(optimizer.defaults, k) for k in expected} == dict(expected)
    assert {k: optimizer.group_value(group, k) for k in expected} == dict(expected)


# -- state_dict interchange and resumption ------------------------------------------------------

BEFORE, AFTER = 4, 8  # steps before the checkpoint, steps after it


@pytest.mark.parametrize("name", SHARED)
def test_torch_state_dict_continues_in_adaptim(name: str) -> None:
    theirs_params = make_params()
    theirs = torch_class(name)(theirs_params, **OPTIONS[name])
    train(theirs, theirs_params, BEFORE)

    ours_params = clone_params(theirs_params)
    ours = adaptim_class(name)(ours_params)  # the hyperparameters come from the checkpoint
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    assert_states_close(ours.state_dict()["state"], theirs.state_dict()["state"], exact=True)
    assert_same_hyperparameters(ours, theirs)

    expected = train(theirs, theirs_params, AFTER, start=BEFORE)
    assert_trajectories_close(train(ours, ours_params, AFTER, start=BEFORE), expected)
    assert_states_close(ours.state_dict()["state"], theirs.state_dict()["state"], exact=False)


@pytest.mark.parametrize("name", SHARED)
def test_adaptim_state_dict_continues_in_torch(name: str) -> None:
    """Loaded into torch.optim, adaptim's checkpoint does what torch's own checkpoint does.

    (The reference is torch resumed from torch: torch's ``load_state_dict``
    casts NAdam's ``mu_product`` to the parameter dtype, which changes its
    own float64 trajectory slightly.)
    """
    ours_params, theirs_params = make_params(), make_params()
    ours = adaptim_class(name)(ours_params, **OPTIONS[name])
    theirs = torch_class(name)(theirs_params, **OPTIONS[name])
    assert_trajectories_close(
        train(ours, ours_params, BEFORE), train(theirs, theirs_params, BEFORE)
    )
    assert_states_close(ours.state_dict()["state"], theirs.state_dict()["state"], exact=False)
    assert (
        ours.state_dict()["param_groups"][0].keys() >= theirs.state_dict()["param_groups"][0].keys()
    )

    from_ours_params = clone_params(ours_params)
    from_ours = torch_class(name)(from_ours_params)
    from_ours.load_state_dict(copy.deepcopy(ours.state_dict()))
    from_theirs_params = clone_params(theirs_params)
    from_theirs = torch_class(name)(from_theirs_params)
    from_theirs.load_state_dict(copy.deepcopy(theirs.state_dict()))

    assert_trajectories_close(
        train(from_ours, from_ours_params, AFTER, start=BEFORE),
        train(from_theirs, from_theirs_params, AFTER, start=BEFORE),
    )
    assert_states_close(
        from_ours.state_dict()["state"], from_theirs.state_dict()["state"], exact=False
    )


@pytest.mark.parametrize("via", ["deepcopy", "torch.save"])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", ALL)
def test_resumption_is_bit_identical(name: str, dtype: torch.dtype, via: str) -> None:
    cls = adaptim_class(name)
    straight_params = make_params(dtype)
    straight = cls(straight_params, **OPTIONS[name])
    train(straight, straight_params, BEFORE + AFTER)

    first_params = make_params(dtype)
    first = cls(first_params, **OPTIONS[name])
    train(first, first_params, BEFORE)
    checkpoint = serialized(first.state_dict(), via)
    resumed_params = clone_params(first_params)
    del first
    resumed = cls(resumed_params)
    resumed.load_state_dict(checkpoint)
    train(resumed, resumed_params, AFTER, start=BEFORE)

    for ours, expected in zip(resumed_params, straight_params, strict=True):
        assert torch.equal(ours, expected)
    assert_states_close(resumed.state_dict()["state"], straight.state_dict()["state"], exact=True)


def test_nadam_mu_product_keeps_its_saved_dtype() -> None:
    params = make_params(F64)
    optimizer = adaptim.NAdam(params)
    train(optimizer, params, 2)
    resumed = adaptim.NAdam(clone_params(params))
    resumed.load_state_dict(optimizer.state_dict())
    for state in resumed.state.values():
        assert state["mu_product"].dtype == torch.float32
        assert state["step"].dtype == torch.float32


# -- LR schedulers ------------------------------------------------------------------------

STEPS = 12

SCHEDULES = [
    pytest.param(
        "sgd",
        {"lr": 0.1, "momentum": 0.9},
        lambda opt: lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
        id="sgd-StepLR",
    ),
    pytest.param(
        "adagrad",
        {"lr": 0.1},
        lambda opt: lr_scheduler.LambdaLR(opt, lambda epoch: 1 / (1 + epoch)),
        id="adagrad-LambdaLR",
    ),
    pytest.param(
        "adam",
        {"lr": 0.01},
        lambda opt: lr_scheduler.OneCycleLR(
            opt, max_lr=0.05, total_steps=STEPS, cycle_momentum=True
        ),
        id="adam-OneCycleLR-betas",
    ),
    pytest.param(
        "rmsprop",
        {"lr": 0.01, "momentum": 0.9},
        lambda opt: lr_scheduler.OneCycleLR(
            opt, max_lr=0.05, total_steps=STEPS, cycle_momentum=True
        ),
        id="rmsprop-OneCycleLR-momentum",
    ),
]


@pytest.mark.parametrize(("name", "settings", "schedule"), SCHEDULES)
def test_lr_scheduler_gives_torch_trajectory(
    name: str, settings: dict[str, Any], schedule: Callable[[Any], Any]
) -> None:
    ours_params, theirs_params = make_params(), make_params()
    ours = adaptim_class(name)(ours_params, **settings)
    theirs = torch_class(name)(theirs_params, **settings)
    ours_schedule, theirs_schedule = schedule(ours), schedule(theirs)
    assert_trajectories_close(
        train(ours, ours_params, STEPS, scheduler=ours_schedule),
        train(theirs, theirs_params, STEPS, scheduler=theirs_schedule),
    )
    assert_same_hyperparameters(ours, theirs)


def test_one_cycle_actually_cycles_adam_beta1() -> None:
    params = make_params()
    optimizer = adaptim.Adam(params, lr=0.01)
    schedule = lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=STEPS)
    seen = set()
    for _ in range(STEPS - 1):
        seen.add(optimizer.param_groups[0]["betas"][0])
        train(optimizer, params, 1)
        schedule.step()
    assert len(seen) > 3


# -- closures, zero_grad, parameters without gradients --------------------------------------------


def closure_for(
    optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], t: int, calls: list[Any]
) -> Callable[[], torch.Tensor]:
    """An LBFGS-style closure: clears the gradients, re-evaluates the loss, back-propagates."""

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_at(params, t)
        loss.backward()
        calls.append(loss)
        return loss

    return closure


@pytest.mark.parametrize("name", ALL)
def test_step_with_closure_returns_the_loss(name: str) -> None:
    ours_params, theirs_params = make_params(), make_params()
    ours = adaptim_class(name)(ours_params, **OPTIONS[name])
    theirs = against(name)(theirs_params, **OPTIONS[name])
    for t in range(3):
        calls: list[torch.Tensor] = []
        returned = ours.step(closure_for(ours, ours_params, t, calls))
        assert len(calls) == 1
        assert returned is calls[0]
        assert returned.requires_grad  # evaluated with gradients enabled inside step
        theirs.step(closure_for(theirs, theirs_params, t, []))
        assert_close(ours_params, theirs_params)


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("name", ALL)
def test_zero_grad(name: str, set_to_none: bool) -> None:
    params = make_params()
    optimizer = adaptim_class(name)(params, **OPTIONS[name])
    train(optimizer, params, 1)
    grads = [p.grad for p in params]
    optimizer.zero_grad(set_to_none=set_to_none)
    for p, old in zip(params, grads, strict=True):
        if set_to_none:
            assert p.grad is None
        else:
            assert p.grad is old
            assert torch.equal(p.grad, torch.zeros_like(p))
    before = [p.detach().clone() for p in params]
    state = copy.deepcopy(optimizer.state_dict())
    if set_to_none:  # no gradient at all: nothing moves
        optimizer.step()
        assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
        assert_states_close(optimizer.state_dict()["state"], state["state"], exact=True)


@pytest.mark.parametrize("name", ALL)
def test_params_without_gradients_are_untouched_and_stateless(name: str) -> None:
    params = make_params()
    frozen = torch.randn(2, 2, dtype=F64, requires_grad=True)  # never reaches the loss
    optimizer = adaptim_class(name)([*params, frozen], **OPTIONS[name])
    initial_state = copy.deepcopy(optimizer.state.get(frozen))
    before = frozen.detach().clone()
    train(optimizer, params, 3)
    assert frozen.grad is None
    assert torch.equal(frozen, before)
    if ALGORITHMS[name].state_at_construction:  # Adagrad, like torch: state from the start
        assert_states_close({0: optimizer.state[frozen]}, {0: initial_state}, exact=True)
    else:
        assert frozen not in optimizer.state
    assert all(len(optimizer.state[p]) > 0 for p in params)


# -- tensor lr, param groups, named parameters ----------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", ALL)
def test_tensor_lr_equals_float_lr(name: str, dtype: torch.dtype) -> None:
    lr = torch.tensor(OPTIONS[name]["lr"], dtype=dtype)
    settings = {k: v for k, v in OPTIONS[name].items() if k != "lr"}
    tensor_params, float_params = make_params(), make_params()
    with_tensor = adaptim_class(name)(tensor_params, lr=lr, **settings)
    with_float = adaptim_class(name)(float_params, lr=lr.item(), **settings)
    tensor_run = train(with_tensor, tensor_params, 5)
    float_run = train(with_float, float_params, 5)
    for a, b in zip(tensor_run, float_run, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert isinstance(with_tensor.param_groups[0]["lr"], torch.Tensor)


@pytest.mark.parametrize("name", SHARED)
def test_tensor_lr_follows_torch(name: str) -> None:
    """A float64 tensor: torch.optim rounds some float32-tensor products to float32 on the way."""
    lr = torch.tensor(OPTIONS[name]["lr"], dtype=F64)
    settings = {k: v for k, v in OPTIONS[name].items() if k != "lr"}
    ours_params, theirs_params = make_params(), make_params()
    ours = adaptim_class(name)(ours_params, lr=lr, **settings)
    theirs = torch_class(name)(theirs_params, lr=lr.clone(), **settings)
    assert_trajectories_close(train(ours, ours_params, 5), train(theirs, theirs_params, 5))


def two_groups(name: str, params: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
    """The bias gets half the learning rate, and no weight decay."""
    return [
        {"params": [params[0]]},
        {"params": [params[1]], "lr": OPTIONS[name]["lr"] / 2, "weight_decay": 0.0},
    ]


@pytest.mark.parametrize("name", ALL)
def test_per_group_hyperparameters(name: str) -> None:
    ours_params = make_params()
    ours = adaptim_class(name)(two_groups(name, ours_params), **OPTIONS[name])
    theirs_params = make_params()
    theirs = against(name)(two_groups(name, theirs_params), **OPTIONS[name])
    # Each group on its own behaves as an optimizer of its own with those settings.
    split_params = make_params()
    split = [
        adaptim_class(name)([group], **OPTIONS[name]) for group in two_groups(name, split_params)
    ]
    for t in range(5):
        for optimizer, params in [(ours, ours_params), (theirs, theirs_params)]:
            optimizer.zero_grad()
            loss_at(params, t).backward()
            optimizer.step()
        for optimizer in split:
            optimizer.zero_grad()
        loss_at(split_params, t).backward()
        for optimizer in split:
            optimizer.step()
        assert_close(ours_params, theirs_params)
        assert all(torch.equal(a, b) for a, b in zip(ours_params, split_params, strict=True))
    assert ours.param_groups[1]["lr"] == OPTIONS[name]["lr"] / 2


def tiny_model(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(F64)


def model_loss(model: nn.Module, t: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2000 + t)
    x = torch.randn(16, 4, generator=generator, dtype=F64)
    y = torch.randn(16, 3, generator=generator, dtype=F64)
    return (model(x) - y).square().mean()


def train_model(optimizer: torch.optim.Optimizer, model: nn.Module, steps: int) -> list[float]:
    losses = []
    for t in range(steps):
        optimizer.zero_grad()
        loss = model_loss(model, t)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", ALL)
def test_named_parameters(name: str) -> None:
    ours_model, theirs_model = tiny_model(), tiny_model()
    ours = adaptim_class(name)(ours_model.named_parameters(), **OPTIONS[name])
    theirs = against(name)(theirs_model.named_parameters(), **OPTIONS[name])
    names = [n for n, _ in ours_model.named_parameters()]
    assert ours.param_groups[0]["param_names"] == names
    assert ours.state_dict()["param_groups"][0]["param_names"] == names
    train_model(ours, ours_model, 4)
    train_model(theirs, theirs_model, 4)
    assert_close(list(ours_model.parameters()), list(theirs_model.parameters()))
    if name not in SHARED:  # LARS and LAMB: the names change nothing
        plain_model = tiny_model()
        plain = adaptim_class(name)(plain_model.parameters(), **OPTIONS[name])
        train_model(plain, plain_model, 4)
        assert_close(list(ours_model.parameters()), list(plain_model.parameters()))
    else:
        assert (
            ours.state_dict()["param_groups"][0].keys()
            >= theirs.state_dict()["param_groups"][0].keys()
        )


# -- complex and channels-last parameters ------------------------------------------------


@pytest.mark.parametrize("name", SHARED)
def test_complex_parameters_follow_torch(name: str) -> None:
    ours_params, theirs_params = make_params(torch.complex128), make_params(torch.complex128)
    ours = adaptim_class(name)(ours_params, **OPTIONS[name])
    theirs = torch_class(name)(theirs_params, **OPTIONS[name])
    assert_trajectories_close(train(ours, ours_params, 4), train(theirs, theirs_params, 4))
    assert_states_close(ours.state_dict()["state"], theirs.state_dict()["state"], exact=False)
    for state in ours.state.values():
        for key, value in state.items():
            if value.dim() > 0:
                assert value.is_complex(), key


@pytest.mark.parametrize("name", ALL)
def test_channels_last_parameter(name: str) -> None:
    generator = torch.Generator().manual_seed(3)
    initial = torch.randn(2, 3, 4, 4, generator=generator, dtype=F64)
    target = torch.randn(2, 3, 4, 4, generator=generator, dtype=F64)
    ours_param = initial.clone().to(memory_format=torch.channels_last).requires_grad_()
    theirs_param = initial.clone().requires_grad_()
    ours = adaptim_class(name)([ours_param], **OPTIONS[name])
    theirs = against(name)([theirs_param], **OPTIONS[name])
    for _ in range(4):
        for optimizer, param in [(ours, ours_param), (theirs, theirs_param)]:
            optimizer.zero_grad()
            (torch.tanh(param) - target).square().sum().backward()
            optimizer.step()
    assert ours_param.is_contiguous(memory_format=torch.channels_last)
    assert_close(ours_param, theirs_param)
    for value in ours.state[ours_param].values():
        if value.shape == ours_param.shape:  # (not Adafactor's factored moments)
            assert value.is_contiguous(memory_format=torch.channels_last)


# -- sparse gradients ---------------------------------------------------------------------

SPARSE_STEPS = 50
ROWS, DIM = 10, 3

SPARSE_CASES = [
    pytest.param("sgd", {"lr": 0.05}, id="sgd"),
    pytest.param("sgd", {"lr": 0.05, "momentum": 0.9}, id="sgd-momentum"),
    pytest.param("sgd", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3}, id="sgd-dampening"),
    pytest.param("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, id="sgd-nesterov"),
    pytest.param("sgd", {"lr": 0.05, "maximize": True}, id="sgd-maximize"),
    pytest.param("sgd", {"lr": 0.05, "momentum": 0.5, "maximize": True}, id="sgd-momentum-max"),
    pytest.param("sgd", {"lr": 0.05, "weight_decay": 0.1}, id="sgd-weight_decay"),
    pytest.param(
        "sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1}, id="sgd-momentum-weight_decay"
    ),
    pytest.param("adagrad", {"lr": 0.1}, id="adagrad"),
    pytest.param("adagrad", {"lr": 0.1, "lr_decay": 0.05}, id="adagrad-lr_decay"),
    pytest.param(
        "adagrad", {"lr": 0.1, "initial_accumulator_value": 0.5}, id="adagrad-initial_acc"
    ),
    pytest.param("adagrad", {"lr": 0.1, "maximize": True}, id="adagrad-maximize"),
    pytest.param(
        "adagrad", {"lr": 0.1, "lr_decay": 0.01, "eps": 1e-3, "maximize": True}, id="adagrad-all"
    ),
]


def embedding(sparse: bool) -> nn.Embedding:
    module = nn.Embedding(ROWS, DIM, sparse=sparse).to(F64)
    with torch.no_grad():
        module.weight.copy_(torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(5)))
    return module


def batch_indices(t: int) -> torch.Tensor:
    """Twelve of the first eight rows, with replacement: duplicates in every batch, 2 rows unseen."""
    generator = torch.Generator().manual_seed(3000 + t)
    indices = torch.randint(0, ROWS - 2, (12,), generator=generator)
    assert len(indices.unique()) < len(indices)
    return indices


def embedding_loss(module: nn.Embedding, t: int) -> torch.Tensor:
    indices = batch_indices(t)
    target = torch.linspace(-1, 1, len(indices) * DIM, dtype=F64).reshape(len(indices), DIM)
    return (torch.tanh(module(indices)) - target).square().sum()


def torch_takes_sparse(name: str, settings: dict[str, Any]) -> bool:
    # torch.optim.SGD cannot add weight decay to a sparse gradient; its dense
    # path does the same arithmetic, so it is the reference there.
    return not (name == "sgd" and settings.get("weight_decay", 0) != 0)


@pytest.mark.parametrize(("name", "settings"), SPARSE_CASES)
def test_sparse_embedding_follows_torch(name: str, settings: dict[str, Any]) -> None:
    ours_module = embedding(sparse=True)
    theirs_module = embedding(sparse=torch_takes_sparse(name, settings))
    ours = adaptim_class(name)(ours_module.parameters(), **settings)
    theirs = torch_class(name)(theirs_module.parameters(), **settings)
    for t in range(SPARSE_STEPS):
        for optimizer, module in [(ours, ours_module), (theirs, theirs_module)]:
            optimizer.zero_grad()
            embedding_loss(module, t).backward()
            with torch.sparse.check_sparse_tensor_invariants():
                optimizer.step()
        assert_close(ours_module.weight, theirs_module.weight, msg=lambda m, t=t: f"step {t}: {m}")
    assert ours_module.weight.grad.is_sparse
    assert_states_close(ours.state_dict()["state"], theirs.state_dict()["state"], exact=False)
    if settings.get("weight_decay", 0) == 0:  # the two rows no batch touches never move
        assert torch.equal(ours_module.weight[ROWS - 2 :], embedding(False).weight[ROWS - 2 :])


# -- the nonfinite policy -------------------------------------------------------------------------


def set_grads(params: Sequence[torch.Tensor], t: int, bad: float | None = None) -> None:
    """Gradients for step ``t``; ``bad`` is put into one entry of the first parameter."""
    generator = torch.Generator().manual_seed(4000 + t)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
    if bad is not None:
        params[0].grad[1, 2] = bad


def sparse_grad(t: int, bad: float | None = None) -> torch.Tensor:
    """An uncoalesced sparse gradient for an embedding, with a duplicate row."""
    generator = torch.Generator().manual_seed(5000 + t)
    indices = torch.tensor([[1, 4, 1, 6]])
    values = torch.randn(4, DIM, generator=generator, dtype=F64)
    if bad is not None:
        values[2, 0] = bad
    return torch.sparse_coo_tensor(indices, values, (ROWS, DIM), check_invariants=True)


BAD_VALUES = [math.nan, math.inf, -math.inf]
SPARSE_POLICY_CASES = [
    pytest.param("sgd", {"lr": 0.1, "momentum": 0.9}, id="sgd-momentum"),
    pytest.param("sgd", {"lr": 0.1}, id="sgd"),
    pytest.param("adagrad", {"lr": 0.1, "lr_decay": 0.01}, id="adagrad"),
]


def step_with(
    optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], t: int, bad: Any = None
) -> None:
    set_grads(params, t, bad)
    optimizer.step()


@pytest.mark.parametrize("name", SHARED)
def test_nonfinite_ignore_propagates_like_torch(name: str) -> None:
    ours_params, theirs_params = make_params(), make_params()
    ours = adaptim_class(name)(ours_params, **OPTIONS[name])
    theirs = torch_class(name)(theirs_params, **OPTIONS[name])
    for t, bad in enumerate([None, math.nan, None]):
        step_with(ours, ours_params, t, bad)
        step_with(theirs, theirs_params, t, bad)
        assert_close(ours_params, theirs_params, equal_nan=True)
    assert ours_params[0].isnan().any()
    assert ours.skipped_steps == 0
    assert_states_close(ours.state_dict()["state"], theirs.state_dict()["state"], exact=False)


@pytest.mark.parametrize("bad", BAD_VALUES)
@pytest.mark.parametrize("name", ALL)
def test_nonfinite_skip_skips_the_whole_step(name: str, bad: float) -> None:
    skipping_params, clean_params = make_params(), make_params()
    skipping = adaptim_class(name)(skipping_params, nonfinite="skip", **OPTIONS[name])
    clean = adaptim_class(name)(clean_params, **OPTIONS[name])
    for t in range(3):
        step_with(skipping, skipping_params, t)
        step_with(clean, clean_params, t)
    before_params = [p.detach().clone() for p in skipping_params]
    before_state = copy.deepcopy(skipping.state_dict())

    step_with(skipping, skipping_params, 99, bad)
    assert skipping.skipped_steps == 1
    assert all(torch.equal(p, b) for p, b in zip(skipping_params, before_params, strict=True))
    assert_states_close(skipping.state_dict()["state"], before_state["state"], exact=True)

    for t in range(3, 6):  # afterwards, as if the bad step had never happened
        step_with(skipping, skipping_params, t)
        step_with(clean, clean_params, t)
    assert all(torch.equal(a, b) for a, b in zip(skipping_params, clean_params, strict=True))
    assert_states_close(skipping.state_dict()["state"], clean.state_dict()["state"], exact=True)
    assert skipping.skipped_steps == 1


@pytest.mark.parametrize("bad", BAD_VALUES)
@pytest.mark.parametrize(("name", "settings"), SPARSE_POLICY_CASES)
def test_nonfinite_skip_with_sparse_gradients(
    name: str, settings: dict[str, Any], bad: float
) -> None:
    skipping_module, clean_module = embedding(True), embedding(True)
    skipping = adaptim_class(name)(skipping_module.parameters(), nonfinite="skip", **settings)
    clean = adaptim_class(name)(clean_module.parameters(), **settings)
    for optimizer, module in [(skipping, skipping_module), (clean, clean_module)]:
        module.weight.grad = sparse_grad(0)
        optimizer.step()
    before = skipping_module.weight.detach().clone()
    before_state = copy.deepcopy(skipping.state_dict())

    skipping_module.weight.grad = sparse_grad(99, bad)
    skipping.step()
    assert skipping.skipped_steps == 1
    assert torch.equal(skipping_module.weight, before)
    assert_states_close(skipping.state_dict()["state"], before_state["state"], exact=True)

    for t in (1, 2):
        for optimizer, module in [(skipping, skipping_module), (clean, clean_module)]:
            module.weight.grad = sparse_grad(t)
            optimizer.step()
    assert torch.equal(skipping_module.weight, clean_module.weight)
    assert_states_close(skipping.state_dict()["state"], clean.state_dict()["state"], exact=True)


@pytest.mark.parametrize(("name", "settings"), SPARSE_POLICY_CASES)
def test_nonfinite_ignore_with_sparse_gradients_propagates_like_torch(
    name: str, settings: dict[str, Any]
) -> None:
    ours_module, theirs_module = embedding(True), embedding(True)
    ours = adaptim_class(name)(ours_module.parameters(), **settings)
    theirs = torch_class(name)(theirs_module.parameters(), **settings)
    for t, bad in enumerate([None, math.nan, None]):
        for optimizer, module in [(ours, ours_module), (theirs, theirs_module)]:
            module.weight.grad = sparse_grad(t, bad)
            optimizer.step()
        assert_close(ours_module.weight, theirs_module.weight, equal_nan=True)
    assert ours_module.weight.isnan().any()


@pytest.mark.parametrize("bad", BAD_VALUES)
@pytest.mark.parametrize("name", ALL)
def test_nonfinite_raise_names_the_parameter(name: str, bad: float) -> None:
    params = make_params()
    extra = torch.randn(5, 3, dtype=F64, requires_grad=True)
    groups = [{"params": [params[1]]}, {"params": [extra, params[0]]}]
    optimizer = adaptim_class(name)(groups, nonfinite="raise", **OPTIONS[name])
    step_with(optimizer, [params[0], params[1], extra], 0)
    before = [t.detach().clone() for t in (*params, extra)]
    before_state = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(FloatingPointError, match=r"param_groups\[1\]\['params'\]\[1\]"):
        step_with(optimizer, [params[0], params[1], extra], 1, bad)
    after = [params[0], params[1], extra]
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert_states_close(optimizer.state_dict()["state"], before_state["state"], exact=True)
    assert optimizer.skipped_steps == 0


@pytest.mark.parametrize(("name", "settings"), SPARSE_POLICY_CASES)
def test_nonfinite_raise_with_sparse_gradients(name: str, settings: dict[str, Any]) -> None:
    dense_param = torch.randn(2, 2, dtype=F64, requires_grad=True)
    module = embedding(True)
    optimizer = adaptim_class(name)([dense_param, module.weight], nonfinite="raise", **settings)
    dense_param.grad = torch.ones(2, 2, dtype=F64)
    module.weight.grad = sparse_grad(0, math.inf)
    before = module.weight.detach().clone()
    with pytest.raises(FloatingPointError, match=r"param_groups\[0\]\['params'\]\[1\]"):
        optimizer.step()
    assert torch.equal(module.weight, before)
    assert torch.equal(dense_param.grad, torch.ones(2, 2, dtype=F64))


# -- a real, tiny training run -------------------------------------------------------------------


def test_tiny_mlp_training_matches_torch_adam() -> None:
    ours_model, theirs_model = tiny_model(seed=7), tiny_model(seed=7)
    ours = adaptim.Adam(ours_model.parameters(), lr=1e-2)
    theirs = torch.optim.Adam(theirs_model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(128, 4, generator=generator, dtype=F64)
    y = torch.stack([torch.sin(x[:, 0] + x[:, 1]), x[:, 2] * x[:, 3], torch.cos(x[:, 1])], dim=1)

    def fit(optimizer: torch.optim.Optimizer, model: nn.Module) -> Iterator[float]:
        for _ in range(300):
            optimizer.zero_grad()
            loss = (model(x) - y).square().mean()
            loss.backward()
            optimizer.step()
            yield loss.item()

    ours_losses, theirs_losses = list(fit(ours, ours_model)), list(fit(theirs, theirs_model))
    assert ours_losses[-1] < 0.3 * ours_losses[0]
    assert ours_losses[-1] == pytest.approx(theirs_losses[-1], rel=1e-6)
    assert_close(list(ours_model.parameters()), list(theirs_model.parameters()))
