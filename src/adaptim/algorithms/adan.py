"""Adan: adaptive Nesterov momentum estimated from gradient differences."""

from __future__ import annotations

from typing import Any

from adaptim.algorithms._spec import Algorithm, Array, ArrayOps, HParams, UpdateResult
from adaptim.algorithms._validation import (
    check_bool,
    check_choice,
    check_eps,
    check_lr,
    check_range,
    check_weight_decay,
)


def adan_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    betas: tuple[float, float, float],
    eps: float,
    eps_root: float,
    weight_decay: float,
    diff_scale: str,
    bias_correction: bool,
    proximal_weight_decay: bool,
) -> UpdateResult:
    r"""One Adan step (Xie et al. 2022, "Adan: Adaptive Nesterov Momentum Algorithm for Faster
    Optimizing Deep Models", Algorithm 1), with :math:`\Delta_t = g_t - g_{t-1}`
    (0 on the first step) and optax's convention for the decay rates (the
    weight of the old value; the paper's :math:`\beta_i` are :math:`1 - \beta_i` here):

    .. math::

        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
        v_t &= \beta_2 v_{t-1} + (1-\beta_2)\, \Delta_t \\
        n_t &= \beta_3 n_{t-1} + (1-\beta_3)\, (g_t + c\,\Delta_t)^2 \\
        u_t &= \frac{\hat m_t + c\, \hat v_t}{\sqrt{\hat n_t + \bar\epsilon} + \epsilon},
        \qquad \hat x_t = x_t / (1 - \beta^t) \\
        \theta_t &= \theta_{t-1} - \gamma\,(u_t + \lambda\,\theta_{t-1})
        \ \text{(optax)} \quad\text{or}\quad
        \theta_t = \frac{\theta_{t-1} - \gamma\, u_t}{1 + \gamma\lambda}
        \ \text{(paper, proximal)}

    The state has the names of the authors' PyTorch code: ``exp_avg``
    (:math:`m`), ``exp_avg_diff`` (:math:`v`), ``exp_avg_sq`` (:math:`n`) and
    ``pre_grad`` (:math:`g_{t-1}`).

    Where frameworks differ (see :mod:`adaptim.flavors`):

    * ``diff_scale`` (:math:`c`): the paper writes :math:`(1 - \beta_2)` in
      its own convention, which is :math:`\beta_2` here (0.92 by default), as
      the authors' code uses it: ``"beta2"``. optax 0.2.8 writes
      ``1 - b2`` with ``b2`` already in the weight-of-the-old-value
      convention, so its :math:`c` is 0.08: ``"one_minus_beta2"``.
    * ``bias_correction``: optax (and the authors' code) start every moving
      average at 0 and correct it, :math:`\hat x_t = x_t/(1-\beta^t)`.
      ``False`` is the paper's initialisation instead: the first step sets
      :math:`m = g_1,\ v = 0,\ n = g_1^2`, the second
      :math:`v = g_2 - g_1` (the paper's :math:`v_1`), and no average is
      corrected.
    * ``proximal_weight_decay``: the paper's (and the authors' default)
      proximal step divides by :math:`1 + \gamma\lambda`; optax adds
      :math:`\lambda\theta` to the update before scaling by :math:`\gamma`.
    * ``eps_root`` (:math:`\bar\epsilon`): optax's alias adds 1e-8 under the
      root; the paper has none.

    ``optax`` is the default flavor (optax has no default learning rate;
    adaptim's 1e-3 is the paper's). torch.optim has no Adan.
    """
    beta1, beta2, beta3 = betas
    if xp.traced:  # the step-dependent branches as where(), so the compiled graph holds them
        diff = xp.where(step > 1, g - state["pre_grad"], g * 0)
    else:
        diff = g - state["pre_grad"] if step > 1 else g * 0
    scale = beta2 if diff_scale == "beta2" else 1 - beta2
    belief = xp.axpy(g, diff, scale)
    if bias_correction:
        exp_avg = xp.lerp(state["exp_avg"], g, 1 - beta1)
        exp_avg_diff = xp.lerp(state["exp_avg_diff"], diff, 1 - beta2)
        exp_avg_sq = xp.addcmul(state["exp_avg_sq"] * beta3, belief, belief, 1 - beta3)
        first = exp_avg / (1 - beta1**step)
        second = exp_avg_diff / (1 - beta2**step)
        third = exp_avg_sq / (1 - beta3**step)
    elif xp.traced:
        exp_avg = xp.where(step == 1, g, xp.lerp(state["exp_avg"], g, 1 - beta1))
        later_diff = xp.where(step == 2, diff, xp.lerp(state["exp_avg_diff"], diff, 1 - beta2))
        exp_avg_diff = xp.where(step == 1, g * 0, later_diff)
        later_sq = xp.addcmul(state["exp_avg_sq"] * beta3, belief, belief, 1 - beta3)
        exp_avg_sq = xp.where(step == 1, g * g, later_sq)
        first, second, third = exp_avg, exp_avg_diff, exp_avg_sq
    elif step == 1:  # the paper's m_0 = g_0, v_0 = 0, n_0 = g_0^2
        exp_avg, exp_avg_diff, exp_avg_sq = g, g * 0, g * g
        first, second, third = exp_avg, exp_avg_diff, exp_avg_sq
    else:
        exp_avg = xp.lerp(state["exp_avg"], g, 1 - beta1)
        # the paper's v_1 = g_1 - g_0 (its second step), then the moving average
        exp_avg_diff = diff if step == 2 else xp.lerp(state["exp_avg_diff"], diff, 1 - beta2)
        exp_avg_sq = xp.addcmul(state["exp_avg_sq"] * beta3, belief, belief, 1 - beta3)
        first, second, third = exp_avg, exp_avg_diff, exp_avg_sq
    update = xp.axpy(first, second, scale) / (xp.sqrt(third + eps_root) + eps)
    new_state = {
        "exp_avg": exp_avg,
        "exp_avg_diff": exp_avg_diff,
        "exp_avg_sq": exp_avg_sq,
        "pre_grad": g,
    }
    if weight_decay == 0:
        return p - lr * update, new_state
    if proximal_weight_decay:
        return (p - lr * update) / (1 + lr * weight_decay), new_state
    return p - lr * (update + weight_decay * p), new_state


def adan_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    betas: tuple[float, float, float],
    eps: float,
    eps_root: float,
    bias_correction: bool = True,
    **_: Any,
) -> Array:
    r""":math:`\gamma / (\sqrt{\hat n_t + \bar\epsilon} + \epsilon)`, the factor applied to
    :math:`\hat m_t + c\,\hat v_t` (before a proximal weight decay)."""
    third = state["exp_avg_sq"]
    if bias_correction:
        third = third / (1 - betas[2] ** step)
    return lr / (xp.sqrt(third + eps_root) + eps)


def _validate(hp: HParams) -> None:
    check_lr(hp)
    betas = hp["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 3:
        raise ValueError(f"Invalid betas: {betas!r}; expected a triple (beta1, beta2, beta3).")
    for index, beta in enumerate(betas):
        check_range(hp, "betas", 0.0, 1.0, high_open=True, label=f"beta{index + 1}", value=beta)
    check_eps(hp)
    check_range(hp, "eps_root", 0.0)
    check_weight_decay(hp)
    check_choice(hp, "diff_scale", ("one_minus_beta2", "beta2"))
    check_bool(hp, "bias_correction")
    check_bool(hp, "proximal_weight_decay")


DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "betas": (0.98, 0.92, 0.99),
    "eps": 1e-8,
    "eps_root": 1e-8,
    "weight_decay": 0.0,
    "diff_scale": "one_minus_beta2",
    "bias_correction": True,
    "proximal_weight_decay": False,
}

ADAN = Algorithm(
    name="adan",
    class_name="Adan",
    default_flavor="optax",
    title="Adan: adaptive Nesterov momentum from gradient differences",
    update=adan_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=lambda hp: {"exp_avg": 0.0, "exp_avg_diff": 0.0, "exp_avg_sq": 0.0, "pre_grad": 0.0},
    effective_lr=adan_effective_lr,
)
