"""NovoGrad: SGD with momentum on gradients normalised by a per-layer second moment."""

from __future__ import annotations

from typing import Any

from adaptim.algorithms._spec import Algorithm, Array, ArrayOps, HParams, UpdateResult
from adaptim.algorithms._validation import (
    check_betas,
    check_eps,
    check_lr,
    check_range,
    check_weight_decay,
)


def novograd_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    eps_root: float,
    weight_decay: float,
) -> UpdateResult:
    r"""One NovoGrad step (Ginsburg et al. 2019, "Stochastic Gradient Methods with Layer-wise
    Adaptive Moments for Training of Deep Networks", Algorithm 1).

    For each parameter tensor (a "layer") :math:`w`, with one scalar second
    moment :math:`v` per tensor:

    .. math::

        v_1 &= \lVert g_1 \rVert^2, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\,\lVert g_t \rVert^2 \\
        d_t &= \frac{g_t}{\sqrt{v_t + \bar\epsilon} + \epsilon} + \lambda\, w_{t-1} \\
        m_1 &= d_1, \qquad m_t = \beta_1 m_{t-1} + d_t \\
        w_t &= w_{t-1} - \gamma\, m_t

    The state is ``exp_avg`` (:math:`m`, one value per element) and
    ``exp_avg_sq`` (:math:`v`, one 0-d value per tensor): half of Adam's.
    The momentum sums normalised steps without a :math:`1-\beta_1` factor,
    and the weight decay :math:`\lambda` enters it after the normalisation
    (decoupled from the gradient's scale), both as in the paper.

    ``optax`` (``optax.novograd``) is the only flavor: Algorithm 1 of the
    paper is the same arithmetic (it prints no :math:`\epsilon` on the first
    step). Defaults are optax's: :math:`\beta = (0.9, 0.25)`,
    :math:`\epsilon` = 1e-6, :math:`\bar\epsilon` = 0; optax has no default
    learning rate, adaptim's is 1e-3. torch.optim has no NovoGrad.
    """
    beta1, beta2 = betas
    norm_sq = xp.norm(g) ** 2
    # v_1 = ||g_1||^2 and m_1 = d_1: no zero start to correct
    first = step == 1
    if xp.traced and state["exp_avg_sq"] is not None:
        # compiled: where() instead of a branch on the step, which would break the graph
        exp_avg_sq = xp.where(first, norm_sq, xp.lerp(state["exp_avg_sq"], norm_sq, 1 - beta2))
    elif xp.traced:  # the first step, traced on its own (the state is created now)
        exp_avg_sq = norm_sq
    else:
        exp_avg_sq = norm_sq if first else xp.lerp(state["exp_avg_sq"], norm_sq, 1 - beta2)
    direction = g / (xp.sqrt(exp_avg_sq + eps_root) + eps)
    if weight_decay != 0:
        direction = direction + weight_decay * p
    if xp.traced:
        exp_avg = xp.where(first, direction, state["exp_avg"] * beta1 + direction)
    else:
        exp_avg = direction if first else state["exp_avg"] * beta1 + direction
    return p - lr * exp_avg, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


def novograd_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    eps: float,
    eps_root: float,
    **_: Any,
) -> Array:
    r""":math:`\gamma / (\sqrt{v_t + \bar\epsilon} + \epsilon)`, the same for every element of a
    tensor: the factor applied to its gradient as it enters the momentum."""
    return p * 0 + lr / (xp.sqrt(state["exp_avg_sq"] + eps_root) + eps)


def _validate(hp: HParams) -> None:
    check_lr(hp)
    check_betas(hp)
    check_eps(hp)
    check_range(hp, "eps_root", 0.0)
    check_weight_decay(hp)


DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "betas": (0.9, 0.25),
    "eps": 1e-6,
    "eps_root": 0.0,
    "weight_decay": 0.0,
}

NOVOGRAD = Algorithm(
    name="novograd",
    class_name="NovoGrad",
    default_flavor="optax",
    title="NovoGrad: momentum on gradients normalised per layer (half of Adam's state)",
    update=novograd_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    # exp_avg_sq is one 0-d value per tensor, created from the first gradient
    state=lambda hp: {"exp_avg": 0.0, "exp_avg_sq": None},
    effective_lr=novograd_effective_lr,
)
