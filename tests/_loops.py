"""Ordinary training loops around an optimizer, shared by the drop-in tests.

Each loop takes a factory that builds the optimizer over the parameters it is
handed, so the same loop runs once with the reference's class (torch.optim or
a reference package) and once with adaptim's. The loops are what users write:
mixed precision with a ``GradScaler`` that skips an overflowing step and
``clip_grad_norm_``, gradients accumulated and kept in place
(``zero_grad(set_to_none=False)``), a layer frozen and thawed with a group
added mid-run, and OneCycleLR (cycling the momentum or beta1 where there is
one) beside ReduceLROnPlateau.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

Factory = Callable[..., torch.optim.Optimizer]
Loop = Callable[[Factory, torch.nn.Module, torch.Tensor, torch.Tensor], None]


def loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x) - y).square().mean()


def amp_skip(make: Factory, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = make(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    for i in range(5):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = loss(model, x, y)
        scaler.scale(value * (1e38 if i == 2 else 1.0)).backward()  # step 2 overflows: skipped
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        scaler.step(opt)
        scaler.update()


def accumulate(make: Factory, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = make(model.parameters())
    for i in range(6):
        loss(model, x[i % 2 :: 2], y[i % 2 :: 2]).backward()
        if i % 2:
            opt.step()
            opt.zero_grad(set_to_none=False)  # the same gradient tensors, zeroed in place


def freeze_and_grow(
    make: Factory,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr_by_hand: bool = True,
) -> None:
    """``lr_by_hand=False`` adds the group at the optimizer's own lr and never sets one
    (Prodigy and D-Adaptation share one estimate between groups)."""
    first, last = model[0], model[2]
    opt = make(first.parameters())
    for i in range(6):
        first.weight.requires_grad_(i not in (2, 3))
        opt.zero_grad()  # a frozen weight keeps grad None for two steps
        loss(model, x, y).backward()
        opt.step()
        if i == 1:
            extra = {"lr": 3e-3} if lr_by_hand else {}
            opt.add_param_group({"params": list(last.parameters()), **extra})
        if lr_by_hand:
            for group in opt.param_groups:
                group["lr"] *= 0.7  # set by hand, as warm-up code does


def schedules(make: Factory, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = make(model.parameters())
    cycles = "momentum" in opt.defaults or "betas" in opt.defaults
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.02, total_steps=8, cycle_momentum=cycles
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    for _ in range(6):
        opt.zero_grad()
        loss(model, x, y).backward()
        opt.step()
        one_cycle.step()
        plateau.step(1.0)  # never improves: cuts the rate every step


#: The loops with learning rates set by hand.
LOOPS: dict[str, Loop] = {
    "amp-skip": amp_skip,
    "accumulate-keep-grads": accumulate,
    "freeze-add-group-lr-by-hand": freeze_and_grow,
    "one-cycle-plateau": schedules,
}

#: The same, for optimizers that set their own learning rate: no lr by hand.
OWN_LR_LOOPS: dict[str, Loop] = {
    **{k: v for k, v in LOOPS.items() if k != "freeze-add-group-lr-by-hand"},
    "freeze-add-group": partial(freeze_and_grow, lr_by_hand=False),
}
