"""Learning-rate schedules, applied identically to every optimizer of a study.

The tuned ``lr`` is the peak rate; the schedule multiplies it by a factor
that depends only on the step and the trial's step budget ``T``:

* ``constant``: 1 throughout.
* ``cosine``: ½(1 + cos(π t/T)), from 1 to 0 (Loshchilov & Hutter 2017,
  ``torch.optim.lr_scheduler.CosineAnnealingLR`` with ``T_max = T``).
* ``warmup-cosine``: linear warm-up over the first 5% of the steps, then
  cosine decay to 0 over the rest (AlgoPerf's baselines;
  ``LinearLR`` then ``CosineAnnealingLR`` through ``SequentialLR``).
* ``step``: ×0.1 at 50% and again at 75% of the steps (``MultiStepLR``),
  the classic ResNet schedule.

Constant schedules flatter AdaGrad, whose own accumulator already decays
its steps; a decaying schedule gives the other optimizers the same help.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch.optim import lr_scheduler

from adaptim.lab.errors import LabError

Schedule = Literal["constant", "cosine", "warmup-cosine", "step"]
SCHEDULES: tuple[Schedule, ...] = ("constant", "cosine", "warmup-cosine", "step")
#: The share of the steps spent warming up in ``warmup-cosine``.
WARMUP_SHARE = 0.05


def check_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise LabError(f"unknown --schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return name


def make_scheduler(
    name: str, optimizer: torch.optim.Optimizer, steps: int
) -> lr_scheduler.LRScheduler | None:
    """The torch scheduler for ``name`` over ``steps`` steps; ``None`` for ``constant``.

    Call its ``step()`` once after every optimizer step.
    """
    schedule = check_schedule(name)
    if schedule == "constant":
        return None
    if schedule == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    if schedule == "step":
        milestones = sorted({max(1, steps // 2), max(1, (3 * steps) // 4)})
        return lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    warmup = max(1, round(WARMUP_SHARE * steps))
    with warnings.catch_warnings():
        # SequentialLR steps its first scheduler on construction; torch warns about the order.
        warnings.simplefilter("ignore", UserWarning)
        return lr_scheduler.SequentialLR(
            optimizer,
            [
                lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup),
                lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps - warmup)),
            ],
            milestones=[warmup],
        )
