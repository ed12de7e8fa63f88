"""Hypergradient descent for PyTorch: SGD-HD, SGDN-HD and Adam-HD (Baydin et al. 2018).

The learning rate of each param group is learned online: ``param_groups[i]["lr"]``
starts at the ``lr`` given (:math:`\\alpha_0`) and then holds the current
:math:`\\alpha_t`, so it is read, saved and loaded like any ``lr``. The rules are
written once in :mod:`adaptim.algorithms.hypergrad` (their docstrings are
appended below) and step through :mod:`adaptim.torch._group`.
"""

from __future__ import annotations

from typing import Any

import torch

from adaptim import algorithms as alg
from adaptim.torch._base import NonFinitePolicy, ParamsT
from adaptim.torch._group import GroupOptimizer
from adaptim.torch.lr_free import Betas, _documented


@_documented
class SGDHD(GroupOptimizer):
    """SGD-HD (Baydin et al. 2018): SGD whose learning rate descends its own hypergradient.

    ``nesterov=True`` (with ``momentum > 0``) is the paper's SGDN-HD;
    ``momentum > 0`` alone uses heavy-ball momentum. ``hypergrad_lr`` is the
    paper's :math:`\\beta`. ``param_groups[i]["lr"]`` is the group's current
    :math:`\\alpha_t` (and what :meth:`effective_lr` returns); a learning-rate
    scheduler that rescales ``lr`` rescales :math:`\\alpha_t`. :math:`\\alpha`
    is not clipped (the paper does not): with a ``hypergrad_lr`` too large for
    the gradients' scale it can turn negative or diverge, and a ``state_dict``
    saved while it is negative is refused on load like a negative ``lr``.
    """

    algorithm = alg.SGD_HD

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        hypergrad_lr: float = 1e-3,
        *,
        maximize: bool = False,
        nonfinite: NonFinitePolicy = "ignore",
    ) -> None:
        defaults: dict[str, Any] = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
            hypergrad_lr=hypergrad_lr, maximize=maximize,
        )  # fmt: skip
        super().__init__(params, defaults, nonfinite=nonfinite)


@_documented
class AdamHD(GroupOptimizer):
    """Adam-HD (Baydin et al. 2018): Adam whose learning rate descends its own hypergradient.

    ``hypergrad_lr`` is the paper's :math:`\\beta`; ``param_groups[i]["lr"]``
    is the group's current :math:`\\alpha_t`. The per-tensor state is
    ``torch.optim.Adam``'s (``step``, ``exp_avg``, ``exp_avg_sq``).
    """

    algorithm = alg.ADAM_HD

    def __init__(
        self,
        params: ParamsT,
        lr: float | torch.Tensor = 1e-3,
        betas: Betas = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        hypergrad_lr: float = 1e-7,
        *,
        maximize: bool = False,
        nonfinite: NonFinitePolicy = "ignore",
    ) -> None:
        defaults: dict[str, Any] = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, hypergrad_lr=hypergrad_lr,
            maximize=maximize,
        )  # fmt: skip
        super().__init__(params, defaults, nonfinite=nonfinite)


HYPERGRAD_OPTIMIZERS: dict[str, type[GroupOptimizer]] = {
    cls.algorithm.name: cls for cls in (SGDHD, AdamHD)
}
