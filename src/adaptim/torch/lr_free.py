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


def _refuse_fsdp(owner: str, fsdp_in_use: bool) -> None:
    if fsdp_in_use is not False:
        raise ValueError(
            f"Invalid fsdp_in_use: {fsdp_in_use!r}; adaptim.{owner} does not all-reduce its "
            "estimate across processes, only False is allowed (the key is kept for state_dict "
            "interchange)."
        )


@_documented
class Prodigy(GroupOptimizer):
    """Prodigy (Mishchenko & Defazio 2024): Adam with an estimated step size ``d``.

    Same arguments, defaults, ``param_groups`` keys (``d``, ``d_max``,
    ``d_numerator``, ``k``) and state as ``prodigyopt.Prodigy`` 1.1.2; the
    current estimate is ``optimizer.param_groups[i]["d"]`` (one value shared
    by all groups). Keep ``lr`` at 1 and change ``d_coef`` to scale it.
    """

    algorithm = alg.PRODIGY

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1.0,
        betas: Betas = (0.9, 0.999),
        beta3: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0,
        decouple: bool = True,
        use_bias_correction: bool = False,
        safeguard_warmup: bool = False,
        d0: float = 1e-6,
        d_coef: float = 1.0,
        growth_rate: float = float("inf"),
        fsdp_in_use: bool = False,
        slice_p: int = 1,
        *,
        maximize: bool = False,
        nonfinite: NonFinitePolicy = "ignore",
    ) -> None:
        _refuse_fsdp("Prodigy", fsdp_in_use)
        defaults: dict[str, Any] = dict(
            lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay,
            decouple=decouple, use_bias_correction=use_bias_correction,
            safeguard_warmup=safeguard_warmup, d0=d0, d_coef=d_coef, growth_rate=growth_rate,
            fsdp_in_use=fsdp_in_use, slice_p=slice_p, maximize=maximize,
        )  # fmt: skip
        super().__init__(params, defaults, nonfinite=nonfinite)


_DADAPT_COMMON = """

    Same arguments, defaults, ``param_groups`` keys and state as
    ``dadaptation.{0}`` 3.2 (dense gradients); the estimate is
    ``optimizer.param_groups[i]["d"]``, one value for all groups. ``log_every``
    and ``fsdp_in_use`` are kept in the groups for ``state_dict`` interchange
    only: adaptim does not log, and refuses ``fsdp_in_use=True``.
"""


@_documented
class DAdaptAdam(GroupOptimizer):
    __doc__ = "D-Adapt Adam (Defazio & Mishchenko 2023): Adam with an estimated step size ``d``."
    __doc__ += (
        _DADAPT_COMMON.format("DAdaptAdam")
        + """
    ``layer_scale`` (a group key in the reference) scales a group's share of
    the estimate and of its steps.
    """
    )

    algorithm = alg.DADAPT_ADAM

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1.0,
        betas: Betas = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        log_every: int = 0,
        decouple: bool = False,
        use_bias_correction: bool = False,
        d0: float = 1e-6,
        growth_rate: float = float("inf"),
        fsdp_in_use: bool = False,
        *,
        layer_scale: float = 1.0,
        maximize: bool = False,
        nonfinite: NonFinitePolicy = "ignore",
    ) -> None:
        _refuse_fsdp("DAdaptAdam", fsdp_in_use)
        defaults: dict[str, Any] = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, log_every=log_every,
            decouple=decouple, use_bias_correction=use_bias_correction, d0=d0,
            growth_rate=growth_rate, fsdp_in_use=fsdp_in_use, layer_scale=layer_scale,
            maximize=maximize,
        )  # fmt: skip
        super().__init__(params, defaults, nonfinite=nonfinite)


@_documented
class DAdaptSGD(GroupOptimizer):
    __doc__ = "D-Adapt SGD (Defazio & Mishchenko 2023): SGD with an estimated step size ``d``."
    __doc__ += _DADAPT_COMMON.format("DAdaptSGD")

    algorithm = alg.DADAPT_SGD

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1.0,
        momentum: float = 0.0,
        weight_decay: float = 0,
        log_every: int = 0,
        d0: float = 1e-6,
        growth_rate: float = float("inf"),
        fsdp_in_use: bool = False,
        *,
        maximize: bool = False,
        nonfinite: NonFinitePolicy = "ignore",
    ) -> None:
        _refuse_fsdp("DAdaptSGD", fsdp_in_use)
        defaults: dict[str, Any] = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, log_every=log_every, d0=d0,
            growth_rate=growth_rate, fsdp_in_use=fsdp_in_use, maximize=maximize,
        )  # fmt: skip
        super().__init__(params, defaults, nonfinite=nonfinite)


@_documented
class DAdaptAdaGrad(GroupOptimizer):
    __doc__ = "D-Adapt AdaGrad (Defazio & Mishchenko 2023): AdaGrad with an estimated step size."
    __doc__ += _DADAPT_COMMON.format("DAdaptAdaGrad")

    algorithm = alg.DADAPT_ADAGRAD

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1.0,
        momentum: float = 0,
        log_every: int = 0,
        weight_decay: float = 0.0,
        eps: float = 1e-6,
        d0: float = 1e-6,
        growth_rate: float = float("inf"),
        *,
        maximize: bool = False,
        nonfinite: NonFinitePolicy = "ignore",
    ) -> None:
        defaults: dict[str, Any] = dict(
            lr=lr, momentum=momentum, log_every=log_every, weight_decay=weight_decay, eps=eps,
            d0=d0, growth_rate=growth_rate, maximize=maximize,
        )  # fmt: skip
        super().__init__(params, defaults, nonfinite=nonfinite)


LR_FREE_OPTIMIZERS: dict[str, type[GroupOptimizer]] = {
    cls.algorithm.name: cls
    for cls in (ScheduleFreeAdamW, ScheduleFreeSGD, Prodigy, DAdaptAdam, DAdaptSGD, DAdaptAdaGrad)
}
