"""NAdam: Adam with Nesterov momentum and Dozat's momentum schedule."""

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
from adaptim.algorithms._validation import check_bool, check_range
from adaptim.algorithms.adam import adam_effective_lr, moments, validate_adam_like


def nadam_update(
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
    momentum_decay: float,
    decoupled_weight_decay: bool,
    momentum_schedule: bool = True,
) -> UpdateResult:
    r"""One NAdam step (Dozat 2016, "Incorporating Nesterov Momentum into Adam").

    .. math::

        \mu_t &= \beta_1 \left(1 - \tfrac12\, 0.96^{t\psi}\right), \qquad
        \Pi_t = \prod_{i \le t} \mu_i \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2 \\
        \theta_t &= \theta_{t-1}
            - \gamma\,\frac{1-\mu_t}{1-\Pi_t}\,\frac{g_t}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}
            - \gamma\,\frac{\mu_{t+1}}{1-\Pi_t\,\mu_{t+1}}\,\frac{m_t}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}

    with momentum decay :math:`\psi` (0.004). :math:`\Pi_t` is stored as
    ``mu_product`` in torch's scalar dtype (float32 unless the default dtype
    is float64), and multiplied in that dtype, exactly as torch does.
    Weight decay is L2 or, with ``decoupled_weight_decay``, AdamW-style.

    Options where frameworks differ (see :mod:`adaptim.flavors`):

    * ``momentum_decay`` :math:`\psi`: 0.004 in torch and in Dozat's schedule
      :math:`0.96^{t/250}`; Keras 3 computes :math:`0.96^{t}`, that is
      :math:`\psi = 1`, so its :math:`\mu_t` reaches :math:`\beta_1` within a
      few hundred steps.
    * ``momentum_schedule``: ``False`` keeps :math:`\mu_t = \beta_1` and
      :math:`\Pi_t = \beta_1^t` (optax's ``nadam``, i.e. ``adam(nesterov=True)``:
      :math:`\hat m = \beta_1 m_t/(1-\beta_1^{t+1}) + (1-\beta_1) g_t/(1-\beta_1^t)`).
    * ``decoupled_weight_decay``: as in Adam (Keras: always decoupled).
    """
    beta1, beta2 = betas
    p, g = decay_weights(xp, p, g, lr, weight_decay, decoupled_weight_decay)
    if momentum_schedule:
        mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
        mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
    else:
        mu = mu_next = beta1
    mu_product = state["mu_product"] * mu
    exp_avg, exp_avg_sq = moments(xp, state, g, beta1, beta2)
    denom = xp.sqrt(exp_avg_sq / (1 - beta2**step)) + eps
    # Without the schedule the product is a power, computed in full precision.
    if not momentum_schedule:
        product = beta1**step
    else:  # compiled: the 0-d tensor itself, since a host read would break the graph
        product = mu_product if xp.traced else xp.scalar(mu_product)
    grad_coef = -lr * (1.0 - mu) / (1.0 - product)
    avg_coef = (-lr * mu_next) / (1.0 - product * mu_next)
    p = xp.addcdiv(p, g, denom, grad_coef)
    p = xp.addcdiv(p, exp_avg, denom, avg_coef)
    return p, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "mu_product": mu_product}


def _validate(hp: HParams) -> None:
    validate_adam_like(hp)
    check_range(hp, "momentum_decay", 0.0)
    check_bool(hp, "decoupled_weight_decay")
    check_bool(hp, "momentum_schedule")


DEFAULTS: dict[str, Any] = {
    "lr": 2e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "momentum_decay": 4e-3,
    "decoupled_weight_decay": False,
    "momentum_schedule": True,
}

NADAM = Algorithm(
    name="nadam",
    class_name="NAdam",
    title="NAdam: Adam with Nesterov momentum and a warming momentum schedule",
    update=nadam_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=lambda hp: {"exp_avg": 0.0, "exp_avg_sq": 0.0},
    scalar_state={"mu_product": 1.0},
    effective_lr=adam_effective_lr,
)
