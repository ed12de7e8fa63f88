"""Adamax: Adam with the infinity norm in place of the second moment."""

from __future__ import annotations

from typing import Any

from adaptim.algorithms._spec import (
    Algorithm,
    Array,
    ArrayOps,
    UpdateResult,
    coupled_weight_decay,
)
from adaptim.algorithms.adam import validate_adam_like


def adamax_update(
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
) -> UpdateResult:
    r"""One Adamax step (Kingma & Ba 2015, Algorithm 2).

    .. math::

        g_t &\leftarrow g_t + \lambda\,\theta_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
        u_t &= \max(\beta_2\, u_{t-1},\ |g_t| + \epsilon) \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\, \frac{m_t}{u_t}

    ``u`` is stored as ``exp_inf``. The paper has no ``eps``; torch adds it to
    ``|g|`` (Keras adds it to ``u`` in the denominator).
    """
    beta1, beta2 = betas
    g = coupled_weight_decay(xp, p, g, weight_decay)
    exp_avg = xp.lerp(state["exp_avg"], g, 1 - beta1)
    exp_inf = xp.maximum(state["exp_inf"] * beta2, xp.abs(g) + eps)
    clr = lr / (1 - beta1**step)
    return p - clr * exp_avg / exp_inf, {"exp_avg": exp_avg, "exp_inf": exp_inf}


def adamax_effective_lr(
    p: Array, state: dict[str, Array], *, step: float, xp: ArrayOps, lr: float, **_: Any
) -> Array:
    r""":math:`\gamma / u_t`, the factor applied to :math:`\hat m_t`."""
    return lr / state["exp_inf"]


DEFAULTS: dict[str, Any] = {"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}

ADAMAX = Algorithm(
    name="adamax",
    title="Adamax: Adam with an exponentially weighted infinity norm",
    update=adamax_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=validate_adam_like,
    state=lambda hp: {"exp_avg": 0.0, "exp_inf": 0.0},
    effective_lr=adamax_effective_lr,
)
