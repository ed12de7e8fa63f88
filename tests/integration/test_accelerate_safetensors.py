"""accelerate's ``prepare`` / ``save_state`` / ``load_state``, and safetensors' ``save_model``.

Both write a model with safetensors, which refuses tensors that share memory
and drops all but one of them: parameters that an optimizer moved into one
buffer of its own would be missing from the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch
from _cases import (
    assert_params_match,
    batches,
    cases,
    make_optimizer,
    snapshot,
    tiny_model,
    train,
)
from accelerate import Accelerator

STEPS = 4
Params = dict[str, torch.Tensor]


def accelerate_run(library: str, name: str, path: str, folder: Path) -> tuple[Params, Params]:
    """Half the steps, ``save_state``; then the run going on, and a fresh run resumed from it."""
    data = batches(STEPS)
    half = len(data) // 2
    accelerator = Accelerator(cpu=True)
    model = tiny_model()
    model, optimizer = accelerator.prepare(
        model, make_optimizer(library, name, path, model.parameters())
    )
    train(model, optimizer, data[:half])
    accelerator.save_state(str(folder))

    resumed_accelerator = Accelerator(cpu=True)  # a new job: only the resumed model is registered
    resumed = tiny_model(seed=1)
    resumed, resumed_optimizer = resumed_accelerator.prepare(
        resumed, make_optimizer(library, name, path, resumed.parameters())
    )
    resumed_accelerator.load_state(str(folder))
    train(resumed, resumed_optimizer, data[half:])
    train(model, optimizer, data[half:])
    return snapshot(model), snapshot(resumed)


@pytest.mark.parametrize(("name", "path"), cases())
def test_accelerate_save_state_and_load_state(tmp_path: Path, name: str, path: str) -> None:
    straight, resumed = accelerate_run("torch", name, path, tmp_path / "torch")
    assert_params_match(resumed, straight, "default", "torch.optim resumed against straight")
    ours, ours_resumed = accelerate_run("adaptim", name, path, tmp_path / "adaptim")
    assert_params_match(ours, straight, path)
    assert_params_match(ours_resumed, straight, path, "adaptim resumed against torch.optim")


@pytest.mark.parametrize(("name", "path"), cases())
def test_safetensors_save_model_and_load_model(tmp_path: Path, name: str, path: str) -> None:
    data = batches(STEPS)
    model = tiny_model()
    train(model, make_optimizer("adaptim", name, path, model.parameters()), data)
    reference = tiny_model()
    train(reference, make_optimizer("torch", name, path, reference.parameters()), data)
    assert_params_match(snapshot(model), snapshot(reference), path)

    file = tmp_path / "model.safetensors"
    safetensors.torch.save_model(model, str(file))
    assert set(safetensors.torch.load_file(str(file))) == set(model.state_dict())
    loaded = tiny_model(seed=1)
    missing, unexpected = safetensors.torch.load_model(loaded, str(file))
    assert not missing and not unexpected, (missing, unexpected)
    assert_params_match(snapshot(loaded), snapshot(model), "default", "loaded against saved")
