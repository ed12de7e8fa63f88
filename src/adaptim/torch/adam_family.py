"""The Adam family, drop-in for ``torch.optim``: Adam, AdamW, Adamax, NAdam and RAdam.

As in :mod:`adaptim.torch.optimizers` (which lists them in ``OPTIMIZERS``),
each class only states torch's signature; its rule lives in
:mod:`adaptim.algorithms`.
"""

from __future__ import annotations

import torch

from adaptim import algorithms as alg
from adaptim.flavors import default
from adaptim.torch._base import NonFinitePolicy, Optimizer, ParamsT
from adaptim.torch._docs import _documented

Betas = tuple[float | torch.Tensor, float | torch.Tensor]


def _torchs_pair(betas: Betas | list[float | torch.Tensor]) -> Betas:
    """Betas given as a list, kept as the tuple torch.optim.Adam and AdamW keep."""
    if isinstance(betas, list):  # (any other value is checked, and refused, as given)
        return tuple(betas)  # type: ignore[return-value]
    return betas


@_documented
class Adam(Optimizer):
    """Adam, with AMSGrad and decoupled weight decay as options.

    Same arguments, defaults and ``state_dict`` as :class:`torch.optim.Adam`.
    """

    algorithm = alg.ADAM

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = default(1e-3),
        betas: Betas = default((0.9, 0.999)),
        eps: float = default(1e-8),
        weight_decay: float = default(0),
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = default(False),
        nonfinite: NonFinitePolicy = "ignore",
        flavor: str = "torch",
        state_dtype: torch.dtype | str | None = None,
        state_bits: int | None = None,
        epsilon_hat: bool = default(False),
        amsgrad_max: str = default("raw"),
        bias_correction: bool = default(True),
    ) -> None:
        defaults = dict(
            lr=lr, betas=_torchs_pair(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, foreach=foreach, capturable=capturable,
            differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay, epsilon_hat=epsilon_hat,
            amsgrad_max=amsgrad_max, bias_correction=bias_correction,
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
class AdamW(Optimizer):
    """AdamW: Adam with decoupled weight decay (default 1e-2).

    Same arguments, defaults and ``state_dict`` as :class:`torch.optim.AdamW`.
    """

    algorithm = alg.ADAMW

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = default(1e-3),
        betas: Betas = default((0.9, 0.999)),
        eps: float = default(1e-8),
        weight_decay: float = default(1e-2),
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
        flavor: str = "torch",
        state_dtype: torch.dtype | str | None = None,
        state_bits: int | None = None,
        epsilon_hat: bool = default(False),
        amsgrad_max: str = default("raw"),
        bias_correction: bool = default(True),
    ) -> None:
        defaults = dict(
            lr=lr, betas=_torchs_pair(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, foreach=foreach, capturable=capturable,
            differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
            epsilon_hat=epsilon_hat, amsgrad_max=amsgrad_max, bias_correction=bias_correction,
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
class Adamax(Optimizer):
    """Adamax. Same arguments, defaults and ``state_dict`` as :class:`torch.optim.Adamax`."""

    algorithm = alg.ADAMAX

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = default(2e-3),
        betas: Betas = default((0.9, 0.999)),
        eps: float = default(1e-8),
        weight_decay: float = default(0),
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
        flavor: str = "torch",
        state_dtype: torch.dtype | str | None = None,
        state_bits: int | None = None,
        eps_in_max: bool = default(True),
        decoupled_weight_decay: bool = default(False),
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach,
            maximize=maximize, differentiable=differentiable, capturable=capturable,
            eps_in_max=eps_in_max, decoupled_weight_decay=decoupled_weight_decay,
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
class NAdam(Optimizer):
    """NAdam. Same arguments, defaults and ``state_dict`` as :class:`torch.optim.NAdam`."""

    algorithm = alg.NADAM

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = default(2e-3),
        betas: Betas = default((0.9, 0.999)),
        eps: float = default(1e-8),
        weight_decay: float = default(0),
        momentum_decay: float = default(4e-3),
        decoupled_weight_decay: bool = default(False),
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
        flavor: str = "torch",
        state_dtype: torch.dtype | str | None = None,
        state_bits: int | None = None,
        momentum_schedule: bool = default(True),
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize, foreach=foreach, capturable=capturable,
            differentiable=differentiable, momentum_schedule=momentum_schedule,
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
class RAdam(Optimizer):
    """RAdam. Same arguments, defaults and ``state_dict`` as :class:`torch.optim.RAdam`."""

    algorithm = alg.RADAM

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = default(1e-3),
        betas: Betas = default((0.9, 0.999)),
        eps: float = default(1e-8),
        weight_decay: float = default(0),
        decoupled_weight_decay: bool = default(False),
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
        flavor: str = "torch",
        state_dtype: torch.dtype | str | None = None,
        state_bits: int | None = None,
        epsilon_hat: bool = default(True),
        rectify_threshold: float = default(5.0),
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
            foreach=foreach, capturable=capturable,
            decoupled_weight_decay=decoupled_weight_decay, differentiable=differentiable,
            epsilon_hat=epsilon_hat, rectify_threshold=rectify_threshold,
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
