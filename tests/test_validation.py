"""Hyperparameter validation, for every optimizer of both front-ends.

Every invalid value must be refused when the optimizer is built, whether it is
given as a constructor argument, in a param group of the constructor, or in a
group passed to ``add_param_group`` later, and the error must name the
parameter, show the offending value and say what is allowed. A refused
``add_param_group`` leaves the optimizer exactly as it was.

The cases are one table (``CASES``); each applies to the optimizers whose
algorithm has every hyperparameter it sets, in both front-ends and by all
three routes. Sparse gradients that an algorithm cannot take, and the
``nonfinite``, ``capturable`` and ``differentiable`` switches, come last.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

import adaptim
import adaptim.numpy as anp
from adaptim.algorithms import ALGORITHMS

NAN = math.nan

# -- the two front-ends ---------------------------------------------------------------


@dataclass(frozen=True)
class FrontEnd:
    """What a test needs to build optimizers of one front-end."""

    name: str
    optimizers: Mapping[str, type]
    new_param: Callable[[], Any]
    array: Callable[[Sequence[float]], Any]


def _torch_param() -> torch.Tensor:
    return torch.zeros(2, 2, requires_grad=True)


def _numpy_param() -> np.ndarray:
    return np.zeros((2, 2))


FRONT_ENDS = {
    "torch": FrontEnd("torch", adaptim.OPTIMIZERS, _torch_param, torch.tensor),
    "numpy": FrontEnd("numpy", anp.OPTIMIZERS, _numpy_param, np.array),
}


def accepts_keyword(cls: type, name: str) -> bool:
    """Whether the constructor has an argument ``name`` (the NumPy front-end takes them all)."""
    parameters = inspect.signature(cls.__init__).parameters
    return name in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def snapshot(optimizer: Any) -> dict[str, Any]:
    """Everything a refused ``add_param_group`` must leave as it was."""
    groups = [
        {
            **{k: copy.deepcopy(v) for k, v in g.items() if k != "params"},
            "params": [id(p) for p in g["params"]],
        }
        for g in optimizer.param_groups
    ]
    # torch keys the state by tensor, the NumPy front-end by position.
    state = {
        key if isinstance(key, int) else id(key): copy.deepcopy(entries)
        for key, entries in optimizer.state.items()
    }
    return {"groups": groups, "state": state, "defaults": dict(optimizer.defaults)}


def assert_same_snapshot(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual["groups"] == expected["groups"]
    assert actual["defaults"] == expected["defaults"]
    assert actual["state"].keys() == expected["state"].keys()
    for key, entries in expected["state"].items():
        assert actual["state"][key].keys() == entries.keys()
        for name, value in entries.items():
            assert np.array_equal(np.asarray(actual["state"][key][name]), np.asarray(value))


# -- the table of invalid settings ----------------------------------------------------


@dataclass(frozen=True)
class Case:
    """Hyperparameters that must be refused, and what the error must say.

    ``pieces`` must appear in the message in this order: the parameter's name,
    the offending value, and what is allowed. A callable value is built per
    front-end (a tensor for torch, an array for NumPy).
    """

    id: str
    settings: Mapping[str, Any]
    error: type[Exception]
    pieces: tuple[str, ...]

    def values(self, front: FrontEnd) -> dict[str, Any]:
        return {k: v(front) if callable(v) else v for k, v in self.settings.items()}

    def match(self) -> str:
        return ".*".join(re.escape(piece) for piece in self.pieces)


# Range-checked scalars: the name, bad values and the allowed range as the message states it.
RANGES: dict[str, tuple[tuple[float, ...], str]] = {
    "lr": ((-0.1, -math.inf), "0 <= lr"),
    "eps": ((-1e-08,), "0 <= eps"),
    "weight_decay": ((-0.01,), "0 <= weight_decay"),
    "momentum": ((-0.5,), "0 <= momentum"),
    "dampening": ((-0.1, 1.5), "0 <= dampening <= 1"),
    "alpha": ((-0.1, 1.5), "0 <= alpha <= 1"),
    "rho": ((-0.1, 1.5), "0 <= rho <= 1"),
    "lr_decay": ((-0.1,), "0 <= lr_decay"),
    "initial_accumulator_value": ((-0.1,), "0 <= initial_accumulator_value"),
    "momentum_decay": ((-0.1,), "0 <= momentum_decay"),
    "trust_coefficient": ((0.0, -1.0), "0 < trust_coefficient"),
}

BOOLS: dict[str, Any] = {
    "nesterov": 1,
    "centered": "yes",
    "amsgrad": 0,
    "decoupled_weight_decay": None,
    "trust_clip": 1.0,
    "exclude_bias_and_norm": "no",
    "bias_correction": 0,
    "maximize": "False",
}


def _range_cases() -> list[Case]:
    # NaN is outside every range: its message states the range like any other bad value's.
    cases = []
    for name, (bad_values, allowed) in RANGES.items():
        for value in (*bad_values, NAN):
            cases.append(
                Case(f"{name}={value!r}", {name: value}, ValueError, (name, repr(value), allowed))
            )
    return cases


def _beta_cases() -> list[Case]:
    cases = []
    for index in (0, 1):
        label = f"beta{index + 1}"
        for value in (-0.1, 1.0, 1.5, NAN):
            betas = [0.9, 0.999]
            betas[index] = value
            cases.append(
                Case(
                    f"{label}={value!r}",
                    {"betas": tuple(betas)},
                    ValueError,
                    (label, repr(value), f"0 <= {label} < 1"),
                )
            )
    for betas in ((0.9,), 0.9, (0.9, 0.99, 0.999), None):
        cases.append(
            Case(f"betas={betas!r}", {"betas": betas}, ValueError, ("betas", repr(betas), "pair"))
        )
    return cases


def _weight_norm_clip_cases() -> list[Case]:
    cases = [
        Case(
            f"weight_norm_clip={clip!r}",
            {"weight_norm_clip": clip},
            ValueError,
            ("weight_norm_clip", repr(clip), "None or a pair (low, high) with 0 <= low <= high"),
        )
        for clip in (5.0, (1.0,), (0.0, 1.0, 2.0), "0,10")
    ]
    cases += [
        Case(
            f"weight_norm_clip={clip!r}",
            {"weight_norm_clip": clip},
            ValueError,
            (label, value, allowed),
        )
        for clip, label, value, allowed in [
            ((-1.0, 10.0), "weight_norm_clip[0]", "-1.0", "0 <= weight_norm_clip[0]"),
            ((NAN, 10.0), "weight_norm_clip[0]", "nan", "0 <= weight_norm_clip[0]"),
            ((5.0, 1.0), "weight_norm_clip[1]", "1.0", "5 <= weight_norm_clip[1]"),
            ((0.0, NAN), "weight_norm_clip[1]", "nan", "0 <= weight_norm_clip[1]"),
        ]
    ]
    return cases


def _type_cases() -> list[Case]:
    cases = [
        Case(f"{name}={value!r}", {name: value}, TypeError, (name, repr(value), "True or False"))
        for name, value in BOOLS.items()
    ]
    cases += [
        Case(f"lr={value!r}", {"lr": value}, TypeError, ("lr", repr(value), "real number"))
        for value in (None, True, "0.01", [0.01])
    ]
    cases += [
        Case(
            "lr=2-element tensor",
            {"lr": lambda front: front.array([0.01, 0.02])},
            ValueError,
            ("lr", "2 elements", "a number or a 1-element tensor"),
        ),
        Case(
            "lr=0-element tensor",
            {"lr": lambda front: front.array([])},
            ValueError,
            ("lr", "0 elements", "a number or a 1-element tensor"),
        ),
        Case(
            "lr=negative 1-element tensor",
            {"lr": lambda front: front.array(-0.5)},
            ValueError,
            ("lr", "-0.5", "0 <= lr"),
        ),
        Case(
            "momentum=2-element tensor",
            {"momentum": lambda front: front.array([0.9, 0.9])},
            ValueError,
            ("momentum", "2 elements", "a number or a 1-element tensor"),
        ),
    ]
    return cases


COMBINATIONS = [
    Case(
        "nesterov without momentum",
        {"nesterov": True, "momentum": 0},  # SGD's rule (AdaBelief's nesterov needs none)
        ValueError,
        ("nesterov=True", "momentum > 0", "momentum=0"),
    ),
    Case(
        "nesterov with dampening",
        {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
        ValueError,
        ("nesterov=True", "dampening = 0", "dampening=0.1"),
    ),
]

CASES = [
    *_range_cases(),
    *_beta_cases(),
    *_weight_norm_clip_cases(),
    *_type_cases(),
    *COMBINATIONS,
]


#: Hyperparameters an algorithm takes in another form than the table assumes
#: (Adafactor's ``eps`` is a pair; tests/test_torch_twins.py checks it).
OTHER_FORM: dict[str, set[str]] = {"adafactor": {"eps"}}


def applies(case: Case, name: str) -> bool:
    known = {*ALGORITHMS[name].hparams, "maximize"} - OTHER_FORM.get(name, set())
    if "betas" in case.settings and len(ALGORITHMS[name].defaults.get("betas", ())) != 2:
        return False  # Adan's three betas: tests/test_optax_family.py checks them
    return all(key in known for key in case.settings)


def table(*, as_arguments: bool) -> list[Any]:
    """Every case for every optimizer it applies to, in both front-ends.

    ``as_arguments`` keeps the cases the constructor can take as keyword
    arguments (torch's AdamW, for one, has no ``decoupled_weight_decay``).
    """
    return [
        pytest.param(front, name, case, id=f"{front.name}-{name}-{case.id}")
        for front in FRONT_ENDS.values()
        for name, cls in front.optimizers.items()
        for case in CASES
        if applies(case, name)
        and (not as_arguments or all(accepts_keyword(cls, key) for key in case.settings))
    ]


@pytest.mark.parametrize(("front", "name", "case"), table(as_arguments=True))
def test_refused_as_constructor_argument(front: FrontEnd, name: str, case: Case) -> None:
    with pytest.raises(case.error, match=case.match()):
        front.optimizers[name]([front.new_param()], **case.values(front))


@pytest.mark.parametrize(("front", "name", "case"), table(as_arguments=False))
def test_refused_in_a_constructor_param_group(front: FrontEnd, name: str, case: Case) -> None:
    groups = [
        {"params": [front.new_param()]},
        {"params": [front.new_param()], **case.values(front)},
    ]
    with pytest.raises(case.error, match=case.match()):
        front.optimizers[name](groups)


@pytest.mark.parametrize(("front", "name", "case"), table(as_arguments=False))
def test_refused_by_add_param_group_which_changes_nothing(
    front: FrontEnd, name: str, case: Case
) -> None:
    optimizer = front.optimizers[name]([front.new_param()])
    before = snapshot(optimizer)
    late = front.new_param()
    with pytest.raises(case.error, match=case.match()):
        optimizer.add_param_group({"params": [late], **case.values(front)})
    assert_same_snapshot(snapshot(optimizer), before)
    # The refused parameter is not half-registered: a valid group with it is accepted.
    optimizer.add_param_group({"params": [late]})
    assert len(optimizer.param_groups) == 2


@pytest.mark.parametrize("front", FRONT_ENDS.values(), ids=FRONT_ENDS)
@pytest.mark.parametrize("name", ALGORITHMS)
def test_valid_settings_are_accepted(front: FrontEnd, name: str) -> None:
    """The edges of every allowed range are accepted (the table above tests just outside them)."""
    edges = {
        "lr": 0.0,
        "eps": 0.0,
        "weight_decay": 0.0,
        "momentum": 0.0,
        "dampening": 1.0,
        "alpha": 1.0,
        "rho": 0.0,
        "lr_decay": 0.0,
        "initial_accumulator_value": 0.0,
        "momentum_decay": 0.0,
        "trust_coefficient": 1e-12,
        "betas": (0.0, 0.0),
        "weight_norm_clip": (2.0, 2.0),
    }
    hparams = ALGORITHMS[name].hparams
    settings = {
        k: v for k, v in edges.items() if k in hparams and k not in OTHER_FORM.get(name, ())
    }
    if "betas" in settings:  # one edge per beta (Adan has three)
        settings["betas"] = (0.0,) * len(ALGORITHMS[name].defaults["betas"])
    optimizer = front.optimizers[name]([{"params": [front.new_param()], **settings}])
    group = optimizer.param_groups[0]
    read = getattr(optimizer, "group_value", lambda g, k: g[k])  # torch: implicit options
    assert all(read(group, k) == v for k, v in settings.items())
    if "weight_norm_clip" in hparams:
        front.optimizers[name]([front.new_param()], weight_norm_clip=None)
    if "lr" in hparams:
        front.optimizers[name]([front.new_param()], lr=front.array(0.5))


@pytest.mark.parametrize("front", FRONT_ENDS.values(), ids=FRONT_ENDS)
@pytest.mark.parametrize("name", ALGORITHMS)
def test_invalid_default_is_refused_even_when_every_group_overrides_it(
    front: FrontEnd, name: str
) -> None:
    """As torch.optim does: a bad default is an error at once, not when a later group needs it."""
    cls = front.optimizers[name]
    with pytest.raises(ValueError, match=r"lr.*-1\.0.*0 <= lr"):
        cls([{"params": [front.new_param()], "lr": 0.1}], lr=-1.0)


@pytest.mark.parametrize("policy", ["bogus", "Skip", None, True])
@pytest.mark.parametrize("front", FRONT_ENDS.values(), ids=FRONT_ENDS)
@pytest.mark.parametrize("name", ALGORITHMS)
def test_invalid_nonfinite_policy_is_refused(front: FrontEnd, name: str, policy: Any) -> None:
    allowed = ".*".join(re.escape(repr(p)) for p in ("ignore", "skip", "raise"))
    with pytest.raises(ValueError, match=rf"nonfinite.*{re.escape(repr(policy))}.*{allowed}"):
        front.optimizers[name]([front.new_param()], nonfinite=policy)


@pytest.mark.parametrize(
    "name", [n for n, a in ALGORITHMS.items() if "weight_decay" in a.hparams]
)  # (Rprop has no weight decay: tests/test_torch_twins.py checks its own close match)
def test_numpy_unknown_hyperparameter_names_a_close_match(name: str) -> None:
    cls = anp.OPTIMIZERS[name]
    expected = r"unknown hyperparameter 'weight_decai'.*Did you mean 'weight_decay'\?"
    with pytest.raises(TypeError, match=expected):
        cls([_numpy_param()], weight_decai=0.1)
    with pytest.raises(TypeError, match=expected):
        cls([{"params": [_numpy_param()], "weight_decai": 0.1}])


# -- torch-only switches ------------------------------------------------------------------


SWITCH_ROWS = [
    pytest.param(name, switch, route, id=f"{name}-{switch}-{route}")
    for name, cls in adaptim.OPTIMIZERS.items()
    for switch in ("capturable", "differentiable")
    for route in ("constructor", "group")
    if route == "group" or accepts_keyword(cls, switch)
]


def _build_with_switch(name: str, switch: str, route: str) -> None:
    cls = adaptim.OPTIMIZERS[name]
    if route == "constructor":
        cls([_torch_param()], **{switch: True})
    else:
        cls([{"params": [_torch_param()], switch: True}])


@pytest.mark.parametrize(("name", "switch", "route"), SWITCH_ROWS)
def test_capturable_and_differentiable_are_refused(name: str, switch: str, route: str) -> None:
    cls = adaptim.OPTIMIZERS[name]
    expected = rf"{switch}.*True.*adaptim\.{cls.__name__} does not support {switch}=True"
    with pytest.raises(ValueError, match=expected):
        _build_with_switch(name, switch, route)
    cls([{"params": [_torch_param()], switch: False}])  # the default value is fine


@pytest.mark.parametrize(("name", "switch", "route"), SWITCH_ROWS)
def test_refusal_only_points_to_torch_optimizers_that_exist(
    name: str, switch: str, route: str
) -> None:
    with pytest.raises(ValueError) as refused:
        _build_with_switch(name, switch, route)
    for pointer in re.findall(r"torch\.optim\.(\w+)", str(refused.value)):
        assert hasattr(torch.optim, pointer), f"the message points to torch.optim.{pointer}"


# -- sparse gradients ---------------------------------------------------------------------

NO_SPARSE = [name for name, algorithm in ALGORITHMS.items() if algorithm.sparse is None]


def test_only_sgd_and_adagrad_take_sparse_gradients() -> None:
    assert sorted(set(ALGORITHMS) - set(NO_SPARSE)) == ["adagrad", "sgd"]


def sparse_setup(
    cls: type[torch.optim.Optimizer], **settings: Any
) -> tuple[torch.optim.Optimizer, torch.Tensor, torch.nn.Embedding]:
    """A dense parameter and then a sparse embedding, both with gradients."""
    generator = torch.Generator().manual_seed(0)
    dense = torch.randn(3, 2, generator=generator, requires_grad=True)
    embedding = torch.nn.Embedding(5, 2, sparse=True)
    with torch.no_grad():
        embedding.weight.copy_(torch.randn(5, 2, generator=generator))
    optimizer = cls([dense, embedding.weight], **settings)
    (dense.sum() + embedding(torch.tensor([1, 3, 1])).square().sum()).backward()
    return optimizer, dense, embedding


SPARSE_REFUSALS = [
    pytest.param(
        name,
        {},
        rf"adaptim\.{adaptim.OPTIMIZERS[name].__name__} does not support sparse gradients"
        r".*adaptim\.Adagrad or adaptim\.SGD",
        id=name,
    )
    for name in NO_SPARSE
] + [
    pytest.param(
        "adagrad",
        {"weight_decay": 0.1},
        r"weight_decay.*sparse gradients.*weight_decay=0\.1.*weight_decay=0",
        id="adagrad-weight_decay",
    )
]


@pytest.mark.parametrize(("name", "settings", "expected"), SPARSE_REFUSALS)
def test_sparse_gradient_is_refused_with_a_pointer(
    name: str, settings: dict[str, Any], expected: str
) -> None:
    optimizer, _, _ = sparse_setup(adaptim.OPTIMIZERS[name], **settings)
    with pytest.raises(RuntimeError, match=expected):
        optimizer.step()


@pytest.mark.parametrize(("name", "settings", "expected"), SPARSE_REFUSALS)
def test_refused_sparse_step_leaves_the_optimizer_unchanged(
    name: str, settings: dict[str, Any], expected: str
) -> None:
    """As torch.optim.Adam does: every gradient is checked before anything is updated.

    After the refusal, with the sparse gradient dropped, the next step is the
    optimizer's first: it equals the step of an optimizer that never saw the
    sparse gradient.
    """
    cls = adaptim.OPTIMIZERS[name]
    optimizer, dense, embedding = sparse_setup(cls, **settings)
    fresh, fresh_dense, fresh_embedding = sparse_setup(cls, **settings)
    with pytest.raises(RuntimeError, match=expected):
        optimizer.step()
    assert torch.equal(dense, fresh_dense)
    assert torch.equal(embedding.weight, fresh_embedding.weight)

    for opt, module in [(optimizer, embedding), (fresh, fresh_embedding)]:
        module.weight.grad = None
        opt.step()
    assert torch.equal(dense, fresh_dense)
    state, fresh_state = optimizer.state_dict()["state"], fresh.state_dict()["state"]
    assert state.keys() == fresh_state.keys()
    for index, entries in fresh_state.items():
        assert state[index].keys() == entries.keys()
        for key, value in entries.items():
            assert torch.equal(state[index][key], value), (index, key)


@pytest.mark.parametrize("name", ["sgd", "adagrad"])
def test_sparse_gradient_of_a_complex_parameter_is_refused(name: str) -> None:
    param = torch.zeros(4, 2, dtype=torch.complex128, requires_grad=True)
    optimizer = adaptim.OPTIMIZERS[name]([param], lr=0.1)
    param.grad = torch.sparse_coo_tensor(
        torch.tensor([[1, 3]]),
        torch.ones(2, 2, dtype=torch.complex128),
        (4, 2),
        check_invariants=True,
    )
    cls_name = adaptim.OPTIMIZERS[name].__name__
    with pytest.raises(RuntimeError, match=rf"adaptim\.{cls_name}.*sparse.*complex"):
        optimizer.step()


@pytest.mark.parametrize(
    ("name", "option", "value"),
    [
        ("Adam", "state_dtype", torch.bfloat16),
        ("AdamW", "state_bits", 8),
        ("SGD", "state_bits", 8),
        ("SGD", "nonfinite", "skip"),
        ("Prodigy", "nonfinite", "raise"),
    ],
)
@pytest.mark.parametrize("where", ["constructor", "add_param_group"])
def test_an_optimizer_wide_option_in_a_param_group_is_refused(
    name: str, option: str, value: Any, where: str
) -> None:
    """``state_dtype``, ``state_bits`` and ``nonfinite`` apply to the whole optimizer; in a
    group dict they were kept and ignored (the group's state stayed float32, silently)."""
    first, second = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    cls = getattr(adaptim, name)
    group = {"params": list(second.parameters()), option: value}
    with pytest.raises(ValueError) as raised:
        if where == "constructor":
            cls([{"params": list(first.parameters())}, group])
        else:
            cls(first.parameters()).add_param_group(group)
    message = str(raised.value)
    assert f"Invalid param group: {option!r} applies to the whole optimizer" in message
    assert f"adaptim.{name}(params, {option}=...)" in message


def test_a_param_group_may_repeat_the_optimizers_own_options() -> None:
    """ZeroRedundancyOptimizer gives the wrapped optimizer groups that carry every keyword
    argument it was given: equal values are taken (normalised: "bfloat16", 32)."""
    model = torch.nn.Linear(3, 2)
    options = {"state_dtype": torch.bfloat16, "nonfinite": "skip"}
    optimizer = adaptim.Adam([{"params": [model.weight], **options}], **options)
    optimizer.add_param_group({"params": [model.bias], "state_dtype": "bfloat16"})
    assert adaptim.SGD([{"params": [model.weight], "state_bits": 32}]).param_groups
