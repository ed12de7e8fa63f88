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

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim

# torch.optim's twins among the classic optimizers
TWINS = [
    name
    for name in (cls.__name__ for cls in adaptim.OPTIMIZERS.values())
    if hasattr(torch.optim, name)
]

Loop = Callable[[type[torch.optim.Optimizer], torch.nn.Module, torch.Tensor, torch.Tensor], None]


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x) - y).square().mean()


def _defaults(name: str) -> dict[str, Any]:
    return {"lr": 0.01} if name == "SGD" else {}  # (torch's SGD has no default lr)


def amp_with_skipped_step(
    cls: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> None:
    opt = cls(model.parameters(), **_defaults(cls.__name__))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    for i in range(5):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = _loss(model, x, y)
        scaler.scale(loss * (1e38 if i == 2 else 1.0)).backward()  # step 2 overflows: skipped
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        scaler.step(opt)
        scaler.update()


def accumulated_kept_grads(
    cls: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> None:
    opt = cls(model.parameters(), **_defaults(cls.__name__))
    for i in range(6):
        _loss(model, x[i % 2 :: 2], y[i % 2 :: 2]).backward()
        if i % 2:
            opt.step()
            opt.zero_grad(set_to_none=False)  # the same gradient tensors, zeroed in place


def frozen_then_grown(cls: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    first, last = model[0], model[2]
    opt = cls(first.parameters(), **_defaults(cls.__name__))
    for i in range(6):
        first.weight.requires_grad_(i not in (2, 3))
        opt.zero_grad()  # a frozen weight keeps grad None for two steps
        _loss(model, x, y).backward()
        opt.step()
        if i == 1:
            opt.add_param_group({"params": last.parameters(), "lr": 3e-3})
        for group in opt.param_groups:
            group["lr"] *= 0.7  # set by hand, as warm-up code does


def one_cycle(cls: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = cls(model.parameters(), **_defaults(cls.__name__))
    cycles = "momentum" in opt.defaults or "betas" in opt.defaults
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.02, total_steps=8, cycle_momentum=cycles
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    for _ in range(6):
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        opt.step()
        schedule.step()
        plateau.step(1.0)  # never improves: cuts the rate every step


LOOPS: dict[str, Loop] = {
    "amp-skip": amp_with_skipped_step,
    "accumulate-keep-grads": accumulated_kept_grads,
    "freeze-add-group-lr-by-hand": frozen_then_grown,
    "one-cycle-plateau": one_cycle,
}


def _final(cls: Any, loop: Loop, seed: int, width: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, width), torch.nn.Tanh(), torch.nn.Linear(width, 3)
    )
    x, y = torch.randn(8, 5), torch.randn(8, 3)
    loop(cls, model, x, y)
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
