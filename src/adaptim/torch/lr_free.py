"""Learning-rate-free optimizers for PyTorch: Schedule-Free, Prodigy, D-Adaptation.

Each class takes the reference package's arguments, defaults, ``param_groups``
keys and state names, so a ``state_dict`` moves between adaptim and
``schedulefree``, ``prodigyopt`` or ``dadaptation``. The rules are written
once in :mod:`adaptim.algorithms` (their docstrings are appended below) and
step through :mod:`adaptim.torch._group`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch

from adaptim import algorithms as alg
from adaptim.torch._base import NonFinitePolicy, ParamsT
from adaptim.torch._group import GroupOptimizer, TrainEvalMixin

_Opt = TypeVar("_Opt", bound=type[GroupOptimizer])

Betas = tuple[float | torch.Tensor, float | torch.Tensor]


def _documented(cls: _Opt) -> _Opt:
    """Append the rule's docstring (equations, paper, reference quirks) to the class's."""
    rule_doc = cls.algorithm.update.__doc__ or ""
    cls.__doc__ = (cls.__doc__ or "") + _COMMON + rule_doc
    return cls


_COMMON = """
    Besides the reference's arguments, ``maximize`` ascends instead of descending
    and ``nonfinite`` (``"ignore"`` | ``"skip"`` | ``"raise"``) decides what a
    NaN or Inf gradient does.

    The update rule
    ---------------
"""


@_documented
class ScheduleFreeAdamW(TrainEvalMixin, GroupOptimizer):
    """Schedule-Free AdamW (Defazio et al. 2024): AdamW without a learning-rate schedule.

    Same arguments, defaults, ``param_groups`` and state as
    ``schedulefree.AdamWScheduleFree`` 1.4.1. Like it, the optimizer starts in
    eval mode: call ``optimizer.train()`` before training and
    ``optimizer.eval()`` before evaluating or saving (the parameters then hold
    the averaged point :math:`x`); ``step()`` in eval mode raises.
    """

    algorithm = alg.SCHEDULEFREE_ADAMW

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 0.0025,
        betas: Betas = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        nonfinite: NonFinitePolicy = "ignore",
    ) -> None:
        defaults: dict[str, Any] = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, warmup_steps=warmup_steps,
            r=r, weight_lr_power=weight_lr_power, foreach=foreach, maximize=maximize,
        )  # fmt: skip
        super().__init__(params, defaults, nonfinite=nonfinite)


@_documented
class ScheduleFreeSGD(TrainEvalMixin, GroupOptimizer):
    """Schedule-Free SGD (Defazio et al. 2024): SGD with momentum as an online average.

    Same arguments, defaults, ``param_groups`` and state as
    ``schedulefree.SGDScheduleFree`` 1.4.1, with the same ``train()``/``eval()``
    contract as :class:`ScheduleFreeAdamW`.
    """

    algorithm = alg.SCHEDULEFREE_SGD

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        nonfinite: NonFinitePolicy = "ignore",
    ) -> None:
        defaults: dict[str, Any] = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, warmup_steps=warmup_steps,
            r=r, weight_lr_power=weight_lr_power, foreach=foreach, maximize=maximize,
        )  # fmt: skip
        super().__init__(params, defaults, nonfinite=nonfinite)


LR_FREE_OPTIMIZERS: dict[str, type[GroupOptimizer]] = {
    cls.algorithm.name: cls for cls in (ScheduleFreeAdamW, ScheduleFreeSGD)
}
