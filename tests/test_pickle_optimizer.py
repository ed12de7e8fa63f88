"""A pickled or deep-copied optimizer object steps on exactly as the original.

``torch.save(optimizer)`` (or of a dict holding model and optimizer) and
``copy.deepcopy`` are used by checkpointing helpers, hyperparameter-search
tools and model-averaging code. torch.optim's optimizers survive both;
torch's ``__getstate__`` keeps only ``defaults``, ``state`` and
``param_groups``, so adaptim's own settings (``nonfinite``, the skipped-step
count, a memory-light state format, Mechanic's base optimizer and scalars)
must be kept explicitly, or the copy fails on its first step.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import pytest
import torch

import adaptim

Factory = Callable[[torch.nn.Module], torch.optim.Optimizer]


def _default(cls: type[torch.optim.Optimizer]) -> Factory:
    return lambda model: cls(model.parameters())


FACTORIES: dict[str, Factory] = {
    **{name: _default(cls) for name, cls in adaptim.OPTIMIZERS.items() if name != "sgd"},
    **{name: _default(cls) for name, cls in adaptim.LR_FREE_OPTIMIZERS.items()},
    "sgd": lambda model: adaptim.SGD(model.parameters(), lr=0.05, momentum=0.9),
    "muon": lambda model: adaptim.Muon([model.weight]),
    "mechanic": lambda model: adaptim.Mechanic(adaptim.Adam(model.parameters())),
    "adam-8bit": lambda model: adaptim.Adam(model.parameters(), state_bits=8),
    "adam-bf16": lambda model: adaptim.Adam(model.parameters(), state_dtype=torch.bfloat16),
    "adam-skip": lambda model: adaptim.Adam(model.parameters(), nonfinite="skip"),
}


def _model() -> torch.nn.Module:
    # 64x300 reaches the 8-bit state's threshold (4,096 elements); the bias stays fp32.
    return torch.nn.Linear(300, 64)


def _steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int, n: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for i in range(n):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=generator)
            if i == 1 and getattr(optimizer, "nonfinite", "ignore") == "skip":
                p.grad[0] = float("nan")  # a skipped step, counted in skipped_steps
        optimizer.step()


def _copied(pair: tuple[torch.nn.Module, torch.optim.Optimizer], via: str) -> Any:
    if via == "deepcopy":
        return copy.deepcopy(pair)
    buffer = io.BytesIO()
    torch.save(pair, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("via", ["deepcopy", "torch.save"])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_a_copied_optimizer_steps_on_like_the_original(name: str, via: str) -> None:
    torch.manual_seed(0)
    model = _model()
    optimizer = FACTORIES[name](model)
    if hasattr(optimizer, "train"):
        optimizer.train()  # Schedule-Free: training mode before training steps
    _steps(model, optimizer, seed=1, n=3)

    model_copy, optimizer_copy = _copied((model, optimizer), via)
    for attribute in ("nonfinite", "skipped_steps"):
        assert getattr(optimizer_copy, attribute, None) == getattr(optimizer, attribute, None)
    fmt, fmt_copy = (getattr(o, "state_format", None) for o in (optimizer, optimizer_copy))
    assert (fmt is None) == (fmt_copy is None)
    if fmt is not None and fmt_copy is not None:  # (its parameter-position cache starts afresh)
        assert (fmt_copy.dtype, fmt_copy.bits, fmt_copy.seed) == (fmt.dtype, fmt.bits, fmt.seed)
    if name == "adam-skip":
        assert optimizer_copy.skipped_steps == 1
    copied = {id(p) for g in optimizer_copy.param_groups for p in g["params"]}
    assert copied <= {id(p) for p in model_copy.parameters()}, "the copy steps other tensors"

    _steps(model, optimizer, seed=2, n=3)
    _steps(model_copy, optimizer_copy, seed=2, n=3)
    for ours, theirs in zip(model.parameters(), model_copy.parameters(), strict=True):
        torch.testing.assert_close(theirs, ours, rtol=0, atol=0)
    torch.testing.assert_close(
        optimizer_copy.state_dict()["state"], optimizer.state_dict()["state"], rtol=0, atol=0
    )


def test_a_pickle_from_before_the_settings_were_kept_still_steps() -> None:
    """Optimizers pickled by earlier adaptim versions lack the settings: defaults fill them."""
    model = _model()
    optimizer = adaptim.Adam(model.parameters())
    _steps(model, optimizer, seed=1, n=2)
    old = torch.optim.Optimizer.__getstate__(optimizer)  # what earlier versions pickled
    restored = adaptim.Adam.__new__(adaptim.Adam)
    restored.__setstate__(copy.deepcopy(old))
    assert (restored.nonfinite, restored.skipped_steps, restored.state_format) == (
        "ignore",
        0,
        None,
    )
    for p in (p for g in restored.param_groups for p in g["params"]):
        p.grad = torch.ones_like(p)
    restored.step()
