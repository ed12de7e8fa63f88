"""The optimizer never owns the user's tensors: what users do with parameters after a step.

One process, no framework: the parameters and gradients must stay the tensors
the model and autograd made, so that saving one parameter saves that parameter
only, two optimizers can share parameters, ``model.to()`` after construction
works as with torch.optim, and torch's flattened optimizer state dicts move
between torch.optim and adaptim.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from _cases import (
    ALGORITHMS,
    address,
    assert_params_match,
    batches,
    cases,
    make_optimizer,
    saver_cases,
    snapshot,
    tiny_model,
    train,
)
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

STEPS = 4


def saved_bytes(value: Any) -> int:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getbuffer().nbytes


@pytest.mark.parametrize(("name", "path"), cases())
def test_step_leaves_parameters_and_gradients_in_place(name: str, path: str) -> None:
    model = tiny_model()
    optimizer = make_optimizer("adaptim", name, path, model.parameters())
    assert train(model, optimizer, batches(STEPS)) == []
    # Gradients kept between steps (zero_grad(set_to_none=False)) stay in place too.
    for x, y in batches(STEPS, seed=2):
        optimizer.zero_grad(set_to_none=False)
        torch.nn.functional.mse_loss(model(x), y).backward()
        before = [(p, address(p), p.grad, address(p.grad)) for p in model.parameters()]
        optimizer.step()
        for p, where, grad, grad_where in before:
            assert address(p) == where, "step() moved a parameter"
            assert p.grad is grad and address(grad) == grad_where, "step() moved a gradient"


@pytest.mark.parametrize(("name", "path"), cases())
def test_torch_save_of_one_parameter_saves_that_parameter(name: str, path: str) -> None:
    model = tiny_model(width=64)
    train(model, make_optimizer("adaptim", name, path, model.parameters()), batches(STEPS))
    bias = model[2].bias  # 3 of 643 parameters
    alone = torch.nn.Parameter(bias.detach().clone())
    assert saved_bytes(bias) == saved_bytes(alone)


@pytest.mark.parametrize(("name", "path"), cases())
def test_two_optimizers_over_the_same_parameters(name: str, path: str) -> None:
    data = batches(STEPS)
    results = {}
    for library in ("torch", "adaptim"):
        model = tiny_model()
        first = make_optimizer(library, name, path, model.parameters())
        second = make_optimizer(
            library, name, path, model.parameters(), lr=ALGORITHMS[name]["lr"] / 3
        )
        for x, y in data:
            first.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            first.step()
            second.step()  # the same gradients, a second update from its own state
        results[library] = snapshot(model)
    assert_params_match(results["adaptim"], results["torch"], path)


@pytest.mark.parametrize(("name", "path"), cases())
def test_model_to_float64_after_construction(name: str, path: str) -> None:
    """Adagrad's ``sum`` stays float32 (made at construction): each new value is
    rounded to float32 where torch's in-place update rounds it (bit-identical)."""
    data = batches(STEPS, dtype=torch.float64)
    results = {}
    for library in ("torch", "adaptim"):
        model = tiny_model()
        optimizer = make_optimizer(library, name, path, model.parameters())
        weight = model[0].weight
        model.to(torch.float64)  # swaps p.data, keeps the Parameter: the optimizer follows
        assert model[0].weight is weight
        train(model, optimizer, data)
        results[library] = snapshot(model)
    assert_params_match(results["adaptim"], results["torch"], path)


@pytest.mark.parametrize(("name", "path"), cases())
def test_model_to_between_steps(name: str, path: str) -> None:
    data = batches(STEPS)
    results = {}
    for library in ("torch", "adaptim"):
        model = tiny_model()
        optimizer = make_optimizer(library, name, path, model.parameters())
        train(model, optimizer, data[:2])
        model.to(torch.float64).to(torch.float32)  # new storage, the same values
        train(model, optimizer, data[2:])
        results[library] = snapshot(model)
    assert_params_match(results["adaptim"], results["torch"], path)


@pytest.mark.parametrize(("name", "path", "saver"), saver_cases())
def test_flattened_optimizer_state_dict_across_libraries(name: str, path: str, saver: str) -> None:
    """``set_optimizer_state_dict(..., flatten_optimizer_state_dict=True)`` without DCP."""
    loader = "adaptim" if saver == "torch" else "torch"
    options = StateDictOptions(flatten_optimizer_state_dict=True)
    data = batches(STEPS)
    straight = tiny_model()
    train(straight, make_optimizer("torch", name, path, straight.parameters()), data)

    model = tiny_model()
    optimizer = make_optimizer(saver, name, path, model.parameters())
    train(model, optimizer, data[:2])
    state = get_optimizer_state_dict(model, optimizer, options=options)
    resumed = tiny_model(seed=1)
    resumed.load_state_dict(model.state_dict())
    resumed_optimizer = make_optimizer(loader, name, path, resumed.parameters())
    set_optimizer_state_dict(resumed, resumed_optimizer, state, options=options)
    train(resumed, resumed_optimizer, data[2:])
    assert_params_match(snapshot(resumed), snapshot(straight), path)
