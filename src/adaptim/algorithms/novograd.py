"""NovoGrad: SGD with momentum on gradients normalised by a per-layer second moment."""

from __future__ import annotations

from typing import Any

from adaptim.algorithms._spec import Algorithm, Array, ArrayOps, HParams, UpdateResult
from adaptim.algorithms._validation import (
    check_betas,
    check_bool,
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
    eps_in_first_step: bool = True,
) -> UpdateResult:
    r"""One NovoGrad step (Ginsburg et al. 2019, "Stochastic Gradient Methods with Layer-wise
    Adaptive Moments for Training of Deep Networks", arXiv 1905.11286, Algorithm 1).

    For each parameter tensor (a "layer") :math:`w`, with one scalar second
    moment :math:`v` per tensor, as optax computes it (flavor ``optax``):

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

    Flavor ``paper`` is the paper's Algorithm 1: the moments start from the
    first gradient with no :math:`\epsilon` at all,
    :math:`m_1 = g_1/\sqrt{v_1} + \lambda w_1` with :math:`v_1 = \lVert g_1\rVert^2`,
    and every later step has :math:`\epsilon` under the square root,
    :math:`m_t = \beta_1 m_{t-1} + g_t/\sqrt{v_t + \epsilon} + \lambda w_t`.
    In options: ``eps=0``, ``eps_root`` the paper's :math:`\epsilon` (1e-8,
    the default of the authors' own implementations in OpenSeq2Seq and
    Jasper) and ``eps_in_first_step=False``. optax keeps
    its :math:`\epsilon` and :math:`\bar\epsilon` on the first step too
    (``eps_in_first_step=True``), so no choice of optax's arguments gives the
    paper's first step unless :math:`\epsilon = 0`.

    Defaults are optax's: :math:`\beta = (0.9, 0.25)`, :math:`\epsilon` =
    1e-6, :math:`\bar\epsilon` = 0; optax has no default learning rate,
    adaptim's is 1e-3. torch.optim has no NovoGrad.
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
    denominator = xp.sqrt(exp_avg_sq + eps_root) + eps
    if not eps_in_first_step:  # the paper's m_1 = g_1/sqrt(v_1) + λw_1: no ε while v_1 = ||g_1||^2
        bare = xp.sqrt(exp_avg_sq)
        denominator = (
            xp.where(first, bare, denominator) if xp.traced else bare if first else denominator
        )
    direction = g / denominator
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
    eps_in_first_step: bool = True,
    **_: Any,
) -> Array:
    r""":math:`\gamma / (\sqrt{v_t + \bar\epsilon} + \epsilon)`, the same for every element of a
    tensor: the factor applied to its gradient as it enters the momentum
    (:math:`\gamma / \sqrt{v_1}` after the paper's first step)."""
    if step == 1 and not eps_in_first_step:
        return p * 0 + lr / xp.sqrt(state["exp_avg_sq"])
    return p * 0 + lr / (xp.sqrt(state["exp_avg_sq"] + eps_root) + eps)


def _validate(hp: HParams) -> None:
    check_lr(hp)
    check_betas(hp)
    check_eps(hp)
    check_range(hp, "eps_root", 0.0)
    check_weight_decay(hp)
    check_bool(hp, "eps_in_first_step")


DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "betas": (0.9, 0.25),
    "eps": 1e-6,
    "eps_root": 0.0,
    "weight_decay": 0.0,
    "eps_in_first_step": True,
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
