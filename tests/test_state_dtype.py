"""State kept in another dtype than its parameter, against torch.optim doing the same.

Users get there with ``model.to()`` after the optimizer has state: Adagrad
creates its ``sum`` at construction, the others at their first step. torch's
in-place updates round each new state value to the state's dtype the moment
it is computed, and the rest of the step reads the rounded value
(:mod:`adaptim.torch._state_rounding`); adaptim must give torch's bits.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

import adaptim

#: (class name, drawn settings) for every torch.optim rule that steps with state of
#: another dtype (Adam, AdamW, Adamax, NAdam, RAdam and centered RMSprop call
#: ``lerp_``, which refuses a gradient of another dtype, in torch as in adaptim).
RULES: dict[str, Any] = {
    "Adagrad": st.fixed_dictionaries(
        {"lr": st.sampled_from([1e-2, 0.1]), "lr_decay": st.sampled_from([0.0, 1e-2])},
        optional={"initial_accumulator_value": st.sampled_from([0.0, 0.1])},
    ),
    "SGD": st.fixed_dictionaries(
        {"lr": st.just(0.1), "momentum": st.sampled_from([0.5, 0.9])},
        optional={"nesterov": st.booleans(), "weight_decay": st.just(1e-2)},
    ),
    "RMSprop": st.fixed_dictionaries(
        {"lr": st.sampled_from([1e-3, 1e-2])}, optional={"momentum": st.just(0.5)}
    ),
    "Adadelta": st.fixed_dictionaries({}, optional={"weight_decay": st.just(1e-2)}),
    "ASGD": st.fixed_dictionaries({"t0": st.sampled_from([1.0, 1e6])}),
    "Rprop": st.fixed_dictionaries({}),
}
#: (state dtype, parameter dtype after ``model.to()``)
DTYPES = [(torch.float32, torch.float64), (torch.bfloat16, torch.float32)]


def _train(
    library: Any, name: str, settings_: dict[str, Any], dtypes: Any, steps: int, seed: int
) -> tuple[torch.nn.Module, Any]:
    low, high = dtypes
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    model.to(low)
    optimizer = getattr(library, name)(model.parameters(), **settings_)
    data = torch.randn(steps + 1, 8, 6)
    for index, x in enumerate(data):
        if index == 1:  # the first step made the state in the low dtype
            model.to(high)
        optimizer.zero_grad()
        model(x.to(model[0].weight.dtype)).square().mean().backward()
        optimizer.step()
    return model, optimizer


@settings(max_examples=24)
@given(
    name=st.sampled_from(sorted(RULES)),
    dtypes=st.sampled_from(DTYPES),
    steps=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_state_of_another_dtype_matches_torch(
    name: str, dtypes: Any, steps: int, seed: int, data: st.DataObject
) -> None:
    settings_ = data.draw(RULES[name], label="settings")
    note(f"{name}({settings_}), state {dtypes[0]}, parameters {dtypes[1]}")
    theirs, their_optimizer = _train(torch.optim, name, settings_, dtypes, steps, seed)
    ours, our_optimizer = _train(adaptim, name, settings_, dtypes, steps, seed)
    for (key, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert a.dtype == dtypes[1]
        if name == "Adadelta":
            # torch computes the update in place on a temporary of the state's dtype
            # (``delta.div_(std).mul_(grad)``), a rounding that no state value shows:
            # within that dtype's rounding, relative to the tensor's scale
            tolerance = 1e-6 if dtypes[0] == torch.float32 else 1e-2
            scale = max(float(b.abs().max()), 1e-12)
            assert float((a - b).abs().max()) / scale <= tolerance, key
        else:
            assert torch.equal(a, b), f"{key}: {(a - b).abs().max().item():.3g} apart"
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        for key, value in their_optimizer.state[q].items():
            mine = our_optimizer.state[p][key]
            assert mine.dtype == value.dtype, key
            if name != "Adadelta" or value.ndim == 0:
                assert torch.equal(mine, value), key


@pytest.mark.slow
def test_compiled_step_with_state_of_another_dtype() -> None:
    """``torch.compile(opt.step)`` takes such parameters too, with the eager step's bits."""
    results = []
    for library, compiled in ((torch.optim, False), (adaptim, True)):
        torch.manual_seed(0)
        model = torch.nn.Linear(7, 3)
        optimizer = library.Adagrad(model.parameters())  # its state: float32, now
        model.to(torch.float64)
        step = torch.compile(optimizer.step) if compiled else optimizer.step
        for x in torch.randn(3, 4, 7, dtype=torch.float64):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (Dynamo's notes on the graph break)
                step()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


#: The rules whose step cannot take such state (``lerp_`` refuses it in torch.optim too).
REFUSING = ["Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adafactor"]
REFUSING += ["Lion", "AdaBelief", "Yogi", "Adan"]


@pytest.mark.parametrize("name", REFUSING)
@pytest.mark.parametrize("foreach", [None, False])
def test_state_a_rule_cannot_take_is_refused_before_anything_changes(
    name: str, foreach: bool | None
) -> None:
    """A refused step names the parameter, the entry, both dtypes and the remedy, and
    changes nothing: not the group before it, whose state is in its own dtype.

    (It used to raise ATen's ``expected dtype float for `end` but got dtype double`` from
    inside the rule, after the earlier group had stepped.)
    """
    torch.manual_seed(0)
    kept, moved = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    groups = [{"params": kept.parameters()}, {"params": moved.parameters()}]
    optimizer = getattr(adaptim, name)(groups, foreach=foreach)

    def backward() -> None:
        optimizer.zero_grad()
        x = torch.randn(5, 4)
        kept(x).square().mean().backward()
        moved(x.to(moved.weight.dtype)).square().mean().backward()

    for _ in range(2):
        backward()
        optimizer.step()
    moved.to(torch.float64)  # its state stays float32
    backward()
    params = [p.detach().clone() for p in [*kept.parameters(), *moved.parameters()]]
    state = {
        id(p): {k: v.clone() for k, v in optimizer.state[p].items()}
        for p in [*kept.parameters(), *moved.parameters()]
    }
    with pytest.raises(RuntimeError) as raised:
        optimizer.step()
    message = str(raised.value)
    assert f"adaptim.{name}: cannot step param_groups[1]['params'][0] (shape (3, 4))" in message
    assert "torch.float32" in message and "torch.float64" in message
    assert "load_state_dict(optimizer.state_dict())" in message
    assert "Nothing was changed." in message
    after = [*kept.parameters(), *moved.parameters()]
    for p, before in zip(after, params, strict=True):
        assert torch.equal(p, before)
        for key, value in optimizer.state[p].items():
            assert torch.equal(value, state[id(p)][key]), key
    # The remedy the message gives works.
    optimizer.load_state_dict(optimizer.state_dict())
    optimizer.step()
    assert not torch.equal(moved.weight, params[2])
