"""A parameter listed twice in a group, ``adaptim.X([w, b, w])``, as torch.optim.X (issue 10).

torch warns that duplicate parameters are deprecated, then its for-loop (the
CPU default) steps such a parameter once per listing, each from the last
one's result; SGD makes a momentum buffer per listing on the first step and
keeps the last. adaptim warns alike and follows that for-loop to the bit on
every path a user can ask for, whichever the group's size.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

import adaptim
from adaptim.torch._engine import AUTO_NATIVE_MIN_NUMEL

TWINS = [cls.__name__ for cls in adaptim.OPTIMIZERS.values() if hasattr(torch.optim, cls.__name__)]
#: adaptim's switches: the default, the per-tensor loop, the replay and the native kernel.
PATHS = {"default": {}, "for-loop": {"foreach": False}, "foreach": {"foreach": True}}
PATHS["fused"] = {"fused": True}


def _settings(name: str, momentum: bool) -> dict[str, Any]:
    if name == "SGD":
        return {"lr": 0.1, "momentum": 0.9 if momentum else 0.0, "weight_decay": 0.01}
    return {}


def _run(
    cls: Any, options: dict[str, Any], size: int, seed: int, steps: int = 3
) -> tuple[list[torch.Tensor], Any, list[str]]:
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(size, generator=generator).requires_grad_()
    b = torch.randn(7, generator=generator).requires_grad_()
    with pytest.warns(UserWarning) as caught:
        optimizer = cls([w, b, w], **options)
    for _ in range(steps):
        w.grad = torch.randn(size, generator=generator)
        b.grad = torch.randn(7, generator=generator)
        optimizer.step()
    return [w, b], optimizer, [str(warning.message) for warning in caught]


@pytest.mark.parametrize("name", TWINS)
@settings(max_examples=4, deadline=None)
@given(
    path=st.sampled_from(sorted(PATHS)),
    large=st.booleans(),
    momentum=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_duplicate_parameters_follow_torchs_for_loop(
    name: str, path: str, large: bool, momentum: bool, seed: int
) -> None:
    size = AUTO_NATIVE_MIN_NUMEL + 3 if large else 5  # the default's native and replay sizes
    options = _settings(name, momentum)
    note(f"{name} {path} size={size} {options}")
    theirs, reference, their_warnings = _run(
        getattr(torch.optim, name), {**options, "foreach": False}, size, seed
    )
    ours, mine, our_warnings = _run(getattr(adaptim, name), {**options, **PATHS[path]}, size, seed)
    assert our_warnings == their_warnings
    if path != "for-loop":  # (which says foreach=False)
        assert mine.fused_status() == ["reference: a parameter listed more than once"]
    assert any("duplicate parameters" in message for message in our_warnings)
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q), f"max difference {(p - q).abs().max()}"
    assert len(mine.state_dict()["state"]) == len(reference.state_dict()["state"])
    for p, q in zip(ours, theirs, strict=True):
        expected = reference.state[q]
        assert set(mine.state[p]) == set(expected)
        for key, value in expected.items():
            assert torch.equal(torch.as_tensor(mine.state[p][key]), torch.as_tensor(value)), key
