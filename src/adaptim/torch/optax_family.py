"""The optimizers torch.optim does not have, from optax: ``torch.optim.Optimizer`` subclasses.

Their arguments follow torch's conventions (``lr``, ``betas``, ``eps``,
``weight_decay``, ``maximize``, ``foreach``, ``fused``); their defaults are
optax's, as is their default ``flavor``. The update each runs is written once
in :mod:`adaptim.algorithms`, whose docstring is appended to the class's.
"""

from __future__ import annotations

import torch

from adaptim import algorithms as alg
from adaptim.flavors import default
from adaptim.torch._base import NonFinitePolicy, Optimizer, ParamsT

Betas = tuple[float | torch.Tensor, float | torch.Tensor]

_COMMON = """
    Besides the hyperparameters of the update below, every adaptim optimizer
    takes ``maximize`` (ascend instead of descend), ``nonfinite``
    (``"ignore"`` | ``"skip"`` | ``"raise"``: what a NaN or Inf gradient does)
    and torch's ``foreach``/``fused`` switches. ``lr`` may be a float or a
    1-element tensor, and every hyperparameter may differ per param group.

    Flavors
    -------
    ``flavor`` (``"optax"``, the default, ``"keras"`` or ``"paper"``, where
    that framework has the algorithm) sets every hyperparameter you do not
    pass to that framework's default; an argument you pass always wins. The
    defaults shown in the signature are optax's (where optax has no default
    learning rate, adaptim's is stated below). See :mod:`adaptim.flavors`.

    The update rule
    ---------------
"""


def _documented(cls: type[Optimizer]) -> type[Optimizer]:
    cls.__doc__ = (cls.__doc__ or "") + _COMMON + (cls.algorithm.update.__doc__ or "")
    return cls


@_documented
class Lion(Optimizer):
    """Lion (Chen et al. 2023): the sign of an interpolated momentum.

    torch.optim has no Lion; the state is one moving average, ``exp_avg``.
    """

    algorithm = alg.LION

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = default(1e-4),
        betas: Betas = default((0.9, 0.99)),
        weight_decay: float = default(1e-3),
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
        flavor: str = "optax",
        state_dtype: torch.dtype | str | None = None,
        state_bits: int | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize, foreach=foreach
        )
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
class AdaBelief(Optimizer):
    """AdaBelief (Zhuang et al. 2020): Adam scaled by the gradient's variance around its average.

    torch.optim has no AdaBelief; the state is ``step``, ``exp_avg`` and ``exp_avg_var``.
    """

    algorithm = alg.ADABELIEF

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = default(1e-3),
        betas: Betas = default((0.9, 0.999)),
        eps: float = default(1e-16),
        eps_root: float = default(1e-16),
        *,
        nesterov: bool = default(False),
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
        flavor: str = "optax",
        state_dtype: torch.dtype | str | None = None,
        state_bits: int | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, eps=eps, eps_root=eps_root, nesterov=nesterov,
            maximize=maximize, foreach=foreach,
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
class Yogi(Optimizer):
    """Yogi (Zaheer et al. 2018): Adam with an additive, sign-controlled second moment.

    torch.optim has no Yogi; the state uses Adam's names (``step``, ``exp_avg``, ``exp_avg_sq``).
    """

    algorithm = alg.YOGI

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = default(1e-2),
        betas: Betas = default((0.9, 0.999)),
        eps: float = default(1e-3),
        *,
        initial_accumulator_value: float = default(1e-6),
        bias_correction: bool = default(True),
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
        flavor: str = "optax",
        state_dtype: torch.dtype | str | None = None,
        state_bits: int | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, eps=eps, initial_accumulator_value=initial_accumulator_value,
            bias_correction=bias_correction, maximize=maximize, foreach=foreach,
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
class Adan(Optimizer):
    """Adan (Xie et al. 2022): adaptive Nesterov momentum from gradient differences.

    torch.optim has no Adan; the state has the names of the authors' PyTorch
    code (``step``, ``exp_avg``, ``exp_avg_diff``, ``exp_avg_sq``, ``pre_grad``).
    ``betas`` are optax's (the weight of the old value), three of them.
    """

    algorithm = alg.ADAN

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = default(1e-3),
        betas: tuple[float, float, float] = default((0.98, 0.92, 0.99)),
        eps: float = default(1e-8),
        weight_decay: float = default(0.0),
        *,
        eps_root: float = default(1e-8),
        diff_scale: str = default("one_minus_beta2"),
        bias_correction: bool = default(True),
        proximal_weight_decay: bool = default(False),
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
        flavor: str = "optax",
        state_dtype: torch.dtype | str | None = None,
        state_bits: int | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, eps=eps, eps_root=eps_root, weight_decay=weight_decay,
            diff_scale=diff_scale, bias_correction=bias_correction,
            proximal_weight_decay=proximal_weight_decay, maximize=maximize, foreach=foreach,
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
class NovoGrad(Optimizer):
    """NovoGrad (Ginsburg et al. 2019): momentum on gradients normalised per layer.

    torch.optim has no NovoGrad; the state is ``step``, ``exp_avg`` (per
    element) and ``exp_avg_sq`` (one 0-d value per tensor).
    """

    algorithm = alg.NOVOGRAD

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = default(1e-3),
        betas: Betas = default((0.9, 0.25)),
        eps: float = default(1e-6),
        weight_decay: float = default(0.0),
        *,
        eps_root: float = default(0.0),
        eps_in_first_step: bool = default(True),
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
        flavor: str = "optax",
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, eps=eps, eps_root=eps_root, weight_decay=weight_decay,
            eps_in_first_step=eps_in_first_step, maximize=maximize, foreach=foreach,
        )  # fmt: skip
        super().__init__(params, defaults, nonfinite=nonfinite, fused=fused, flavor=flavor)


@_documented
class SM3(Optimizer):
    """SM3 (Anil et al. 2019): AdaGrad with per-row and per-column accumulators.

    torch.optim has no SM3; the state is ``accumulator`` (for a matrix, its
    row and column maxima concatenated) and ``momentum_buffer``.
    """

    algorithm = alg.SM3

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = default(1e-2),
        momentum: float = default(0.9),
        eps: float = default(1e-8),
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        nonfinite: NonFinitePolicy = "ignore",
        flavor: str = "optax",
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, eps=eps, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults, nonfinite=nonfinite, fused=fused, flavor=flavor)


OPTAX_FAMILY: dict[str, type[Optimizer]] = {
    cls.algorithm.name: cls for cls in (Lion, AdaBelief, Yogi, Adan, NovoGrad, SM3)
}
