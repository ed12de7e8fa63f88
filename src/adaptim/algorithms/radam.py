"""RAdam: Adam whose adaptive step is switched on as its variance becomes tractable."""

from __future__ import annotations

import math
from typing import Any

from adaptim.algorithms._spec import (
    Algorithm,
    Array,
    ArrayOps,
    HParams,
    UpdateResult,
    decay_weights,
)
from adaptim.algorithms._validation import check_bool, check_range
from adaptim.algorithms.adam import moments, validate_adam_like


def rectification(beta2: float, step: float, threshold: float = 5.0) -> float | None:
    r""":math:`r_t`, or ``None`` while :math:`\rho_t \le` ``threshold`` (the variance is not yet tractable)."""
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2**step) / (1 - beta2**step)
    if rho_t <= threshold:
        return None
    return float(
        ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
    )


def radam_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    epsilon_hat: bool = True,
    rectify_threshold: float = 5.0,
) -> UpdateResult:
    r"""One RAdam step (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate", Alg. 2).

    .. math::

        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2, \qquad
        \hat m_t = m_t / (1-\beta_1^t) \\
        \rho_\infty &= \frac{2}{1-\beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t} \\
        r_t &= \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}, \qquad
        l_t = \frac{\sqrt{1-\beta_2^t}}{\sqrt{v_t} + \epsilon} \\
        \theta_t &= \theta_{t-1} - \gamma\, \hat m_t\, l_t\, r_t \quad (\rho_t > 5), \qquad
        \theta_t = \theta_{t-1} - \gamma\, \hat m_t \quad (\text{otherwise})

    Weight decay is L2 or, with ``decoupled_weight_decay``, AdamW-style.

    Options where frameworks differ (see :mod:`adaptim.flavors`):

    * ``epsilon_hat``: torch adds ``eps`` to the uncorrected :math:`\sqrt{v_t}`
      as written above (``True``); optax adds it after the bias correction,
      :math:`l_t = 1/(\sqrt{v_t/(1-\beta_2^t)} + \epsilon)` (``False``). The
      paper has no ``eps`` (``eps=0``, where both agree).
    * ``rectify_threshold``: the adaptive step is used while
      :math:`\rho_t >` ``rectify_threshold``: 5 in torch, 4 in the paper's
      Algorithm 2. optax tests :math:`\rho_t \ge 5`, which differs from torch
      only if :math:`\rho_t` is exactly 5.
    """
    beta1, beta2 = betas
    p, g = decay_weights(xp, p, g, lr, weight_decay, decoupled_weight_decay)
    exp_avg, exp_avg_sq = moments(xp, state, g, beta1, beta2)
    new_state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    corrected_avg = exp_avg / (1 - beta1**step)
    if xp.traced:  # compiled: both branches, picked by where(), so no branch breaks the graph
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * (beta2**step) / (1 - beta2**step)
        ratio = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        rect_t = xp.sqrt(xp.clip(ratio, 0.0, math.inf))
        if not epsilon_hat:
            adaptive = 1 / (xp.sqrt(exp_avg_sq / (1 - beta2**step)) + eps)
        else:
            adaptive = (1 - beta2**step) ** 0.5 / (xp.sqrt(exp_avg_sq) + eps)
        rectified = p - corrected_avg * lr * adaptive * rect_t
        return xp.where(rho_t > rectify_threshold, rectified, p - corrected_avg * lr), new_state
    rect = rectification(beta2, step, rectify_threshold)
    if rect is not None:
        if not epsilon_hat:
            adaptive = 1 / (xp.sqrt(exp_avg_sq / (1 - beta2**step)) + eps)
            return p - lr * rect * corrected_avg * adaptive, new_state
        adaptive = (1 - beta2**step) ** 0.5 / (xp.sqrt(exp_avg_sq) + eps)
        return p - corrected_avg * lr * adaptive * rect, new_state
    return p - corrected_avg * lr, new_state


def radam_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    epsilon_hat: bool = True,
    rectify_threshold: float = 5.0,
    **_: Any,
) -> Array:
    r""":math:`\gamma\, r_t\, l_t` once rectified, :math:`\gamma` (plain momentum) before."""
    beta2 = betas[1]
    rect = rectification(beta2, step, rectify_threshold)
    if rect is None:
        return p * 0 + lr
    if not epsilon_hat:
        return lr * rect / (xp.sqrt(state["exp_avg_sq"] / (1 - beta2**step)) + eps)
    return lr * rect * (1 - beta2**step) ** 0.5 / (xp.sqrt(state["exp_avg_sq"]) + eps)


def _validate(hp: HParams) -> None:
    validate_adam_like(hp)
    check_bool(hp, "decoupled_weight_decay")
    check_bool(hp, "epsilon_hat")
    check_range(hp, "rectify_threshold", 4.0)


DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "decoupled_weight_decay": False,
    "epsilon_hat": True,
    "rectify_threshold": 5.0,
}

RADAM = Algorithm(
    name="radam",
    class_name="RAdam",
    title="RAdam: Adam with a variance rectification term and an SGD warm start",
    update=radam_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=lambda hp: {"exp_avg": 0.0, "exp_avg_sq": 0.0},
    effective_lr=radam_effective_lr,
)
