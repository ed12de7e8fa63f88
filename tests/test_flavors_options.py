"""Flavor presets and options: resolution, overrides, errors, state_dict, both front-ends."""

from __future__ import annotations

import functools
import itertools
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim
import adaptim.numpy as anp
from adaptim import flavors
from adaptim.algorithms import ALGORITHMS, RESTRICTED

# (Muon, which takes matrices only, has its flavor tests in test_muon_keras.py.)
COMBINATIONS = [
    (name, flavor)
    for name in flavors.DIFFERENCES
    if name in ALGORITHMS
    for flavor in flavors.FLAVORS
    if flavor in flavors.available(name)
]


def _param() -> torch.Tensor:
    return torch.zeros(3, requires_grad=True)


def test_presets_are_data_over_the_rules_hyperparameters() -> None:
    records = {**ALGORITHMS, **RESTRICTED}
    for name, table in flavors.DIFFERENCES.items():
        assert table[records[name].default_flavor] == {}, name
        for flavor, values in table.items():
            assert flavor in flavors.FLAVORS
            assert set(values) <= set(records[name].defaults), (name, flavor)
            records[name].validate(flavors.preset(name, flavor))
    for values in flavors.AMSGRAD_DIFFERENCES.values():
        assert set(values) <= set(ALGORITHMS["adam"].defaults)


@pytest.mark.parametrize(("name", "flavor"), COMBINATIONS)
def test_the_preset_lands_in_param_groups(name: str, flavor: str) -> None:
    """Every preset value is what the group holds (torch's values of adaptim-only options
    stay implicit in the torch front-end, read through ``group_value``)."""
    expected = flavors.preset(name, flavor)
    torch_optimizer = adaptim.OPTIMIZERS[name]([_param()], flavor=flavor)
    numpy_group = anp.OPTIMIZERS[name]([np.zeros(3)], flavor=flavor).param_groups[0]
    torch_group = torch_optimizer.param_groups[0]
    for read in (
        functools.partial(torch_optimizer.group_value, torch_group),
        numpy_group.__getitem__,
    ):
        assert read("flavor") == flavor
        assert {k: read(k) for k in expected} == expected
        assert all(type(read(k)) in (bool, float, int, str, tuple) for k in expected)


def test_default_groups_hold_exactly_torchs_keys() -> None:
    """So distributed checkpoints (DCP, flattened or not) move both ways."""
    for name, cls in adaptim.OPTIMIZERS.items():
        twin = getattr(torch.optim, cls.algorithm.class_name, None)
        if twin is None:
            continue
        ours = cls([_param()]).param_groups[0]
        theirs = twin([_param()]).param_groups[0]
        assert ours.keys() == theirs.keys(), name
    keras = adaptim.Adam([_param()], flavor="keras").param_groups[0]
    assert keras["flavor"] == "keras" and keras["epsilon_hat"] is True


def test_default_flavor_is_torch() -> None:
    optimizer = adaptim.RMSprop([_param()])
    group = optimizer.param_groups[0]
    assert optimizer.group_value(group, "flavor") == "torch"
    defaults = ALGORITHMS["rmsprop"].defaults
    assert {k: optimizer.group_value(group, k) for k in defaults} == defaults


def test_known_values_of_the_presets() -> None:
    assert flavors.preset("rmsprop", "tf1")["initial_accumulator_value"] == 1.0
    assert flavors.preset("adagrad", "keras")["eps"] == 1e-7
    assert flavors.preset("adam", "keras")["epsilon_hat"] is True
    assert flavors.preset("adam", "optax", amsgrad=True)["amsgrad_max"] == "corrected"
    assert flavors.preset("adam", "optax")["amsgrad_max"] == "raw"
    assert flavors.preset("nadam", "keras")["momentum_decay"] == 1.0
    assert flavors.preset("nadam", "optax")["momentum_schedule"] is False
    assert flavors.preset("adamw", "keras")["weight_decay"] == 4e-3
    assert flavors.preset("adamw", "optax")["weight_decay"] == 1e-4
    assert flavors.preset("radam", "paper")["rectify_threshold"] == 4.0


def test_explicit_arguments_win_even_when_equal_to_torchs_default() -> None:
    optimizer = adaptim.RMSprop(
        [_param()], flavor="keras", eps=1e-8, alpha=0.99, eps_inside_sqrt=False
    )
    group = optimizer.param_groups[0]
    inside = optimizer.group_value(group, "eps_inside_sqrt")  # torch's value: implicit
    assert (group["eps"], group["alpha"], inside) == (1e-8, 0.99, False)
    assert group["lr"] == 1e-3 and group["lr_in_momentum"] is True  # the rest is Keras'
    group = adaptim.Adam([_param()], flavor="keras", lr=1e-3, betas=(0.9, 0.999)).param_groups[0]
    assert group["eps"] == 1e-7 and group["epsilon_hat"] is True
    np_group = anp.Adam([np.zeros(2)], flavor="keras", eps=1e-8).param_groups[0]
    assert np_group["eps"] == 1e-8 and np_group["epsilon_hat"] is True


def test_a_param_group_may_name_its_own_flavor() -> None:
    a, b = _param(), _param()
    opt = adaptim.Adagrad([{"params": [a]}, {"params": [b], "flavor": "optax", "lr": 0.5}])
    first, second = opt.param_groups
    assert "flavor" not in first  # torch's keys only, as torch.optim.Adagrad's groups
    assert opt.group_value(first, "flavor") == "torch"
    assert opt.group_value(first, "eps_inside_sqrt") is False
    assert second["flavor"] == "optax" and second["eps_inside_sqrt"] is True
    assert second["lr"] == 0.5 and second["eps"] == 1e-7
    assert float(opt.state[b]["sum"][0]) == pytest.approx(0.1)  # optax's initial accumulator
    groups = anp.Adagrad([{"params": [np.zeros(2)]}, {"params": [np.zeros(2)], "flavor": "optax"}])
    assert groups.param_groups[1]["initial_accumulator_value"] == 0.1


def test_tf1_rmsprop_starts_its_accumulator_at_one() -> None:
    p = _param()
    opt = adaptim.RMSprop([p], flavor="tf1", lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(opt.state[p]["square_avg"], torch.ones(3))  # 0.9 * 1 + 0.1 * 1


@pytest.mark.parametrize("bad", ["kerass", "Keras", "", None, 3])
def test_an_unknown_flavor_is_refused(bad: Any) -> None:
    message = f"Invalid flavor: {bad!r}; allowed: 'torch', 'keras', 'tf1', 'optax', 'paper'."
    with pytest.raises(ValueError) as torch_error:
        adaptim.Adam([_param()], flavor=bad)
    assert str(torch_error.value) == message
    with pytest.raises(ValueError) as numpy_error:
        anp.Adam([np.zeros(2)], flavor=bad)
    assert str(numpy_error.value) == message


@pytest.mark.parametrize(
    ("name", "flavor", "settings", "message"),
    [
        ("radam", "keras", {}, "no Keras 3 flavor of RAdam. Allowed: 'torch', 'optax', 'paper'."),
        ("adamax", "tf1", {}, "flavor of Adamax. Allowed: 'torch', 'keras', 'optax', 'paper'."),
        ("adamw", "tf1", {}, "flavor of AdamW."),
        ("adam", "tf1", {"amsgrad": True}, "flavor of Adam with amsgrad=True."),
        ("sgd", "keras", {}, "adaptim has no Keras 3 flavor of SGD. Allowed: 'torch'."),
        # (it said "the paper has no LARS")
        ("novograd", "keras", {}, "no Keras 3 flavor of NovoGrad. Allowed: 'optax', 'paper'."),
        ("lars", "paper", {}, "adaptim has no separate paper flavor of LARS. Allowed: 'torch'."),
    ],
)
def test_a_flavor_the_framework_lacks_is_refused(
    name: str, flavor: str, settings: dict[str, Any], message: str
) -> None:
    if name not in ("sgd", "lars"):  # (their torch classes take no flavor)
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            adaptim.OPTIMIZERS[name]([_param()], flavor=flavor, **settings)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        anp.OPTIMIZERS[name]([np.zeros(2)], flavor=flavor, **settings)


def test_invalid_option_values_are_refused() -> None:
    with pytest.raises(
        ValueError, match=r"Invalid amsgrad_max: 'max'; allowed: 'raw', 'corrected'"
    ):
        adaptim.Adam([_param()], amsgrad_max="max")
    with pytest.raises(TypeError, match="Invalid eps_inside_sqrt: 1; expected True or False"):
        anp.RMSprop([np.zeros(2)], eps_inside_sqrt=1)
    with pytest.raises(ValueError, match=r"Invalid rectify_threshold: 3\.0"):
        adaptim.RAdam([_param()], rectify_threshold=3.0)


def _steps(opt: Any, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    for g in grads:
        for p in params:
            p.grad = g.clone()
        opt.step()


def test_state_dict_round_trip_keeps_the_flavor() -> None:
    grads = [torch.randn(3, generator=torch.Generator().manual_seed(i)) for i in range(10)]
    straight = _param()
    reference = adaptim.RMSprop([straight], flavor="tf1", momentum=0.5, lr=0.01)
    _steps(reference, [straight], grads)

    first = _param()
    opt = adaptim.RMSprop([first], flavor="tf1", momentum=0.5, lr=0.01)
    _steps(opt, [first], grads[:5])
    saved = opt.state_dict()
    assert saved["param_groups"][0]["flavor"] == "tf1"
    resumed_param = first.detach().clone().requires_grad_(True)
    resumed = adaptim.RMSprop([resumed_param])  # torch flavor until the state is loaded
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["flavor"] == "tf1"
    assert resumed.param_groups[0]["initial_accumulator_value"] == 1.0
    _steps(resumed, [resumed_param], grads[5:])
    assert torch.equal(resumed_param, straight)


def test_a_torch_optim_state_dict_loads_with_torch_options() -> None:
    p = _param()
    theirs = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    theirs.step()
    ours = adaptim.Adam([_param()], flavor="keras")
    ours.load_state_dict(theirs.state_dict())
    group = ours.param_groups[0]
    assert group["lr"] == 0.1
    # torch.optim's groups have no flavor keys: they come from this optimizer's defaults
    assert group["flavor"] == "keras" and group["epsilon_hat"] is True


# -- the NumPy and torch front-ends agree on every option ---------------------------------

OPTION_VALUES: dict[str, list[Any]] = {
    "eps_inside_sqrt": [False, True],
    "lr_in_momentum": [False, True],
    "decoupled_weight_decay": [False, True],
    "epsilon_hat": [False, True],
    "amsgrad_max": ["raw", "corrected"],
    "bias_correction": [False, True],
    "eps_in_max": [False, True],
    "momentum_schedule": [False, True],
    "initial_accumulator_value": [0.0, 1.0],
    "rectify_threshold": [4.0, 5.0],
    # the optax family (issue 16 point 2)
    "diff_scale": ["one_minus_beta2", "beta2"],
    "proximal_weight_decay": [False, True],
    "eps_in_first_step": [False, True],
    # Adafactor (issue 16 point 1)
    "eps1_in_square": [False, True],
    "rms_after_decay": [False, True],
}
EXTRA: dict[str, dict[str, Any]] = {
    "rmsprop": {"momentum": 0.5, "centered": True},
    "adam": {"amsgrad": True},
    "adamw": {"amsgrad": True},
}
AGREEMENT = [
    pytest.param(name, flavor, id=f"{name}-{flavor}")
    for name, flavor in COMBINATIONS
    if flavor in ("torch", "keras")
]


@pytest.mark.parametrize(("name", "flavor"), AGREEMENT)
@settings(max_examples=4)
@given(data=st.data())
def test_numpy_and_torch_front_ends_agree(name: str, flavor: str, data: st.DataObject) -> None:
    # AdamW's decoupled_weight_decay is fixed by its class
    options = [
        k
        for k in OPTION_VALUES
        if k in ALGORITHMS[name].defaults and (name, k) != ("adamw", "decoupled_weight_decay")
    ]
    drawn = {k: data.draw(st.sampled_from(OPTION_VALUES[k]), label=k) for k in options}
    settings_ = {
        **EXTRA.get(name, {}),
        **drawn,
        "flavor": flavor,
        "weight_decay": data.draw(st.sampled_from([0.0, 0.01]), label="weight_decay"),
    }
    if name == "adafactor":  # a pair (eps1, eps2); eps1 below float64's machine epsilon too
        eps1 = data.draw(st.sampled_from([None, 1e-30, 1e-3]), label="eps1")
        settings_["eps"] = (eps1, data.draw(st.sampled_from([1e-3, 3.0]), label="eps2"))
    elif "eps" in ALGORITHMS[name].defaults:  # Lion has none
        settings_["eps"] = data.draw(st.sampled_from([1e-8, 1e-1]), label="eps")
    rng = np.random.default_rng(0)
    start = rng.standard_normal((3, 2))
    grads = [rng.standard_normal((3, 2)) + 0.5 for _ in range(100)]
    w = start.copy()
    numpy_opt = anp.OPTIMIZERS[name]([w], **settings_)
    p = torch.tensor(start, requires_grad=True)
    torch_opt = adaptim.OPTIMIZERS[name]([p], **settings_)
    for g in grads:
        numpy_opt.step([g])
        p.grad = torch.tensor(g)
        torch_opt.step()
    np.testing.assert_allclose(w, p.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_every_option_is_exercised_for_agreement() -> None:
    own = {
        k
        for name, table in flavors.DIFFERENCES.items()
        if name in ALGORITHMS  # (Muon's options: test_muon_keras.py)
        for d in table.values()
        for k in d
    }
    own |= set(itertools.chain.from_iterable(flavors.AMSGRAD_DIFFERENCES.values()))
    numeric = {
        "lr",
        "eps",
        "eps_root",
        "alpha",
        "rho",
        "momentum",
        "weight_decay",
        "momentum_decay",
    }
    structural = own - numeric
    assert structural <= set(OPTION_VALUES)


def test_the_flavor_page_is_up_to_date() -> None:
    """``docs/flavors.md`` is generated: ``adaptim optimizers --flavors > docs/flavors.md``."""
    from pathlib import Path

    from typer.testing import CliRunner

    from adaptim.cli import app
    from adaptim.flavor_docs import render_markdown

    page = Path(__file__).resolve().parents[1] / "docs" / "flavors.md"
    assert page.read_text(encoding="utf-8") == render_markdown(), "regenerate docs/flavors.md"
    result = CliRunner().invoke(app, ["optimizers", "--flavors"])
    assert result.exit_code == 0
    assert result.output == render_markdown()
    assert "θ ← θ − γ·√(1 − β₂ᵗ)/(1 − β₁ᵗ) · m/(√v + ε̂)" in result.output


def test_the_flavor_page_reads_at_80_columns() -> None:
    """``adaptim optimizers --flavors`` in a terminal or a pipe: no line over 80 characters
    (47 were, up to 310: prose, the sources table and long equations) and no trailing
    blanks; every equation and every point of the sources is still there."""
    from typer.testing import CliRunner

    from adaptim.cli import app

    result = CliRunner().invoke(app, ["optimizers", "--flavors"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert [line for line in lines if len(line) > 80] == []
    assert [line for line in lines if line != line.rstrip()] == []
    assert sum(line.startswith("```") for line in lines) % 2 == 0
    text = " ".join(result.output.split())
    # a wrapped equation keeps its parts, in order, and the sources keep every point
    nadam = "θ ← θ − γ(1 − μₜ)/(1 − Πₜ) · g/(√v̂ + ε) − γμₜ₊₁/(1 − Πₜμₜ₊₁) · m/(√v̂ + ε),"
    assert f"{nadam} v̂ = v/(1 − β₂ᵗ) (γ = 0.002, ε = 1e-08)" in text
    for point in ("AdaGrad eps", "RMSprop momentum", "AMSGrad max over", "weight decay"):
        assert point in text
    assert "δ outside √ (Duchi et al.)" in text


def test_the_lab_builds_a_flavor_by_name_at_flavor() -> None:
    from adaptim.lab.errors import LabError
    from adaptim.lab.optimizers import make_optimizer

    group = make_optimizer("rmsprop@keras", [_param()], {"lr": 0.1}).param_groups[0]
    assert (group["flavor"], group["lr"], group["eps"], group["lr_in_momentum"]) == (
        "keras",
        0.1,
        1e-7,
        True,
    )
    with pytest.raises(LabError, match=r"flavor 'keras' does not exist for 'sgd' \(valid: torch\)"):
        make_optimizer("sgd@keras", [_param()], {"lr": 0.1})
    with pytest.raises(LabError, match="flavor 'tf1' does not exist for 'amsgrad'"):
        make_optimizer("amsgrad@tf1", [_param()], {"lr": 0.1})
