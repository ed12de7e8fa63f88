"""Drop-in ``torch.optim`` optimizers: torch's argument names, defaults and state layout.

Each class only states its signature; the update rule it runs is written once
in :mod:`adaptim.algorithms` and its docstring (equations, paper, framework
differences) is appended to the class docstring. The Adam family (Adam, AdamW,
Adamax, NAdam, RAdam) is in :mod:`adaptim.torch.adam_family`; ``OPTIMIZERS``
here lists them all.

``foreach`` and ``fused`` choose how a step runs, as in torch (see
:mod:`adaptim.torch._engine`): ``fused=True`` the native compiled loop,
``foreach=True`` or ``fused=False`` the multi-tensor replay, ``foreach=False``
the per-tensor loop, neither an automatic choice by size and device. Every
optimizer offers both, also where torch has no fused kernel. ``capturable=True`` and ``differentiable=True`` are
refused with a clear error.
"""

from __future__ import annotations

from typing import Any

import torch

from adaptim import algorithms as alg
from adaptim.flavors import default
from adaptim.torch._base import NonFinitePolicy, Optimizer, ParamsT
from adaptim.torch._docs import _documented as _documented

# (the Adam family has its own module; these names stay importable from here)
from adaptim.torch.adam_family import Adam as Adam
from adaptim.torch.adam_family import Adamax as Adamax
from adaptim.torch.adam_family import AdamW as AdamW
from adaptim.torch.adam_family import Betas as Betas
from adaptim.torch.adam_family import NAdam as NAdam
from adaptim.torch.adam_family import RAdam as RAdam


@_documented
class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening and Nesterov momentum.

    Same arguments, defaults and ``state_dict`` as :class:`torch.optim.SGD`;
    sparse gradients are supported.
    """

    algorithm = alg.SGD

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize, foreach=foreach,
            differentiable=differentiable, fused=fused,
        )  # fmt: skip
        super().__init__(params, defaults, nonfinite=nonfinite)


@_documented
class Adagrad(Optimizer):
    """AdaGrad. Same arguments, defaults and ``state_dict`` as :class:`torch.optim.Adagrad`.

    As in torch, the state (``step``, ``sum``) is created at construction, and
    sparse gradients are supported (without weight decay).

    One deliberate difference: an ``initial_accumulator_value`` given in a
    param group is honoured for that group. torch.optim.Adagrad starts every
    group's ``sum`` from the constructor's value, ignoring the group's.
    """

    algorithm = alg.ADAGRAD

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = default(1e-2),
        lr_decay: float = default(0),
        weight_decay: float = default(0),
        initial_accumulator_value: float = default(0),
        eps: float = default(1e-10),
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
        flavor: str = "torch",
        state_dtype: torch.dtype | str | None = None,
        state_bits: int | None = None,
        eps_inside_sqrt: bool = default(False),
        decoupled_weight_decay: bool = default(False),
    ) -> None:
        defaults = dict(
            lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, foreach=foreach,
            maximize=maximize, differentiable=differentiable, fused=fused,
            eps_inside_sqrt=eps_inside_sqrt, decoupled_weight_decay=decoupled_weight_decay,
        )  # fmt: skip
        super().__init__(
            params,
            defaults,
            nonfinite=nonfinite,
            flavor=flavor,
            state_dtype=state_dtype,
            state_bits=state_bits,
        )


@_documented
class RMSprop(Optimizer):
    """RMSprop, plain, centered or with momentum.

    Same arguments, defaults and ``state_dict`` as :class:`torch.optim.RMSprop`.
    """

    algorithm = alg.RMSPROP

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = default(1e-2),
        alpha: float = default(0.99),
        eps: float = default(1e-8),
        weight_decay: float = default(0),
        momentum: float = default(0),
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
        flavor: str = "torch",
        state_dtype: torch.dtype | str | None = None,
        state_bits: int | None = None,
        eps_inside_sqrt: bool = default(False),
        lr_in_momentum: bool = default(False),
        initial_accumulator_value: float = default(0),
        decoupled_weight_decay: bool = default(False),
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
            weight_decay=weight_decay, capturable=capturable, foreach=foreach,
            maximize=maximize, differentiable=differentiable,
            eps_inside_sqrt=eps_inside_sqrt, lr_in_momentum=lr_in_momentum,
            initial_accumulator_value=initial_accumulator_value,
            decoupled_weight_decay=decoupled_weight_decay,
        )  # fmt: skip
        super().__init__(
            params,
            defaults,
            nonfinite=nonfinite,
            fused=fused,
            flavor=flavor,
            state_dtype=state_dtype,
            state_bits=state_bits,
        )


@_documented
class Adadelta(Optimizer):
    """Adadelta. Same arguments, defaults and ``state_dict`` as :class:`torch.optim.Adadelta`."""

    algorithm = alg.ADADELTA

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = default(1.0),
        rho: float = default(0.9),
        eps: float = default(1e-6),
        weight_decay: float = default(0),
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
        flavor: str = "torch",
        state_dtype: torch.dtype | str | None = None,
        state_bits: int | None = None,
        decoupled_weight_decay: bool = default(False),
    ) -> None:
        defaults = dict(
            lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
            capturable=capturable, foreach=foreach, differentiable=differentiable,
            decoupled_weight_decay=decoupled_weight_decay,
        )  # fmt: skip
        super().__init__(
            params,
            defaults,
            nonfinite=nonfinite,
            fused=fused,
            flavor=flavor,
            state_dtype=state_dtype,
            state_bits=state_bits,
        )


@_documented
class LARS(Optimizer):
    """LARS (You et al. 2017): momentum SGD with a per-layer trust ratio.

    torch.optim has no LARS; the state has torch's ``momentum_buffer`` name.
    """

    algorithm = alg.LARS

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0,
        trust_coefficient: float = 1e-3,
        eps: float = 1e-8,
        *,
        trust_clip: bool = False,
        exclude_bias_and_norm: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay,
            trust_coefficient=trust_coefficient, eps=eps, trust_clip=trust_clip,
            exclude_bias_and_norm=exclude_bias_and_norm, maximize=maximize, foreach=foreach,
        )  # fmt: skip
        super().__init__(params, defaults, nonfinite=nonfinite, fused=fused)


@_documented
class LAMB(Optimizer):
    """LAMB (You et al. 2020): Adam with a per-layer trust ratio.

    torch.optim has no LAMB; the state uses Adam's names (``step``,
    ``exp_avg``, ``exp_avg_sq``).
    """

    algorithm = alg.LAMB

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-3,
        betas: Betas = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0,
        *,
        bias_correction: bool = True,
        weight_norm_clip: tuple[float, float] | None = (0.0, 10.0),
        exclude_bias_and_norm: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
    ) -> None:
        defaults: dict[str, Any] = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            bias_correction=bias_correction, weight_norm_clip=weight_norm_clip,
            exclude_bias_and_norm=exclude_bias_and_norm, maximize=maximize, foreach=foreach,
        )  # fmt: skip
        super().__init__(params, defaults, nonfinite=nonfinite, fused=fused)


OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.algorithm.name: cls
    for cls in (SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW, Adamax, NAdam, RAdam, LARS, LAMB)
}
