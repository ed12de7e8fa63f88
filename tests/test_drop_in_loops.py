"""``torch.optim.X`` swapped for ``adaptim.X`` in ordinary training loops (issue 10).

Each loop runs twice from the same seed and data, once with torch.optim's
class and once with adaptim's, default constructor arguments: the final
parameters must be bit-identical (these small models take the multi-tensor
path, which follows torch's for-loop to the bit). The loops are what users
write around an optimizer: mixed precision with a ``GradScaler`` that skips
an overflowing step, ``clip_grad_norm_``, gradients accumulated and kept
in place (``zero_grad(set_to_none=False)``), layers frozen and thawed
mid-run, a group added mid-run, learning rates set by hand or by
schedulers that also cycle the momentum or beta1.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _loops import LOOPS, Loop
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim

# torch.optim's twins among the classic optimizers
TWINS = [
    name
    for name in (cls.__name__ for cls in adaptim.OPTIMIZERS.values())
    if hasattr(torch.optim, name)
]


def _defaults(name: str) -> dict[str, Any]:
    return {"lr": 0.01} if name == "SGD" else {}  # (torch's SGD has no default lr)


def _final(cls: Any, loop: Loop, seed: int, width: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, width), torch.nn.Tanh(), torch.nn.Linear(width, 3)
    )
    x, y = torch.randn(8, 5), torch.randn(8, 3)
    loop(lambda params: cls(params, **_defaults(cls.__name__)), model, x, y)
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("loop", list(LOOPS), ids=list(LOOPS))
@pytest.mark.parametrize("name", TWINS)
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), width=st.integers(1, 12))
def test_the_loop_ends_where_torch_optim_ends(name: str, loop: str, seed: int, width: int) -> None:
    theirs = _final(getattr(torch.optim, name), LOOPS[loop], seed, width)
    ours = _final(getattr(adaptim, name), LOOPS[loop], seed, width)
    for mine, ref in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, ref, rtol=0, atol=0, equal_nan=True)
