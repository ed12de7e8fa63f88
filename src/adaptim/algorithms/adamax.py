"""Adamax: Adam with the infinity norm in place of the second moment."""

from __future__ import annotations

from typing import Any

from adaptim.algorithms._spec import (
    Algorithm,
    Array,
    ArrayOps,
    HParams,
    UpdateResult,
    decay_weights,
)
from adaptim.algorithms._validation import check_bool
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
    eps_in_max: bool = True,
    decoupled_weight_decay: bool = False,
) -> UpdateResult:
    r"""One Adamax step (Kingma & Ba 2015, Algorithm 2).

    .. math::

        g_t &\leftarrow g_t + \lambda\,\theta_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
        u_t &= \max(\beta_2\, u_{t-1},\ |g_t| + \epsilon) \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\, \frac{m_t}{u_t}

    ``u`` is stored as ``exp_inf``. The paper has no ``eps`` (``eps=0``).

    Options where frameworks differ (see :mod:`adaptim.flavors`):

    * ``eps_in_max``: torch and optax add ``eps`` to :math:`|g_t|` inside the
      maximum, as above; with ``False`` (Keras 3) :math:`u_t = \max(\beta_2 u_{t-1}, |g_t|)`
      and the step divides by :math:`u_t + \epsilon`.
    * ``decoupled_weight_decay``: torch adds ``λθ`` to the gradient; Keras
      shrinks ``θ`` by ``γλ`` before the step.
    """
    beta1, beta2 = betas
    p, g = decay_weights(xp, p, g, lr, weight_decay, decoupled_weight_decay)
    exp_avg = xp.lerp(state["exp_avg"], g, 1 - beta1)
    clr = lr / (1 - beta1**step)
    if eps_in_max:
        exp_inf = xp.maximum(state["exp_inf"] * beta2, xp.abs(g) + eps)
        return xp.addcdiv(p, exp_avg, exp_inf, -clr), {"exp_avg": exp_avg, "exp_inf": exp_inf}
    exp_inf = xp.maximum(state["exp_inf"] * beta2, xp.abs(g))
    return xp.addcdiv(p, exp_avg, exp_inf + eps, -clr), {"exp_avg": exp_avg, "exp_inf": exp_inf}


def adamax_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    eps: float,
    eps_in_max: bool = True,
    **_: Any,
) -> Array:
    r""":math:`\gamma / u_t`, the factor applied to :math:`\hat m_t`."""
    return lr / state["exp_inf"] if eps_in_max else lr / (state["exp_inf"] + eps)


def _validate(hp: HParams) -> None:
    validate_adam_like(hp)
    check_bool(hp, "eps_in_max")
    check_bool(hp, "decoupled_weight_decay")


DEFAULTS: dict[str, Any] = {
    "lr": 2e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "eps_in_max": True,
    "decoupled_weight_decay": False,
}

ADAMAX = Algorithm(
    name="adamax",
    class_name="Adamax",
    title="Adamax: Adam with an exponentially weighted infinity norm",
    update=adamax_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=lambda hp: {"exp_avg": 0.0, "exp_inf": 0.0},
    effective_lr=adamax_effective_lr,
    complex_arithmetic="weight_decay",  # torch: g + λθ before view_as_real
)
