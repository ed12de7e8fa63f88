"""Adam, AMSGrad and AdamW: bias-corrected first and second moment estimates."""

from __future__ import annotations

from typing import Any

from adaptim.algorithms._spec import Algorithm, Array, ArrayOps, HParams, UpdateResult
from adaptim.algorithms._validation import (
    check_betas,
    check_bool,
    check_eps,
    check_lr,
    check_weight_decay,
)


def decay_weights(
    xp: ArrayOps, p: Array, g: Array, lr: float, weight_decay: float, decoupled: bool
) -> tuple[Array, Array]:
    """Weight decay as L2 in the gradient, or decoupled from it (Loshchilov & Hutter 2019).

    The decoupled form shrinks the parameter by ``lr·λ`` before the step, as
    torch's AdamW does; the coupled form adds ``λ·θ`` to the gradient.
    """
    if weight_decay == 0:
        return p, g
    if decoupled:
        return p * (1 - lr * weight_decay), g
    return p, xp.axpy(g, p, weight_decay)


def moments(
    xp: ArrayOps, state: dict[str, Array], g: Array, beta1: float, beta2: float
) -> tuple[Array, Array]:
    """The exponential moving averages of the gradient and of its square."""
    exp_avg = xp.lerp(state["exp_avg"], g, 1 - beta1)
    exp_avg_sq = xp.addcmul(state["exp_avg_sq"] * beta2, g, g, 1 - beta2)
    return exp_avg, exp_avg_sq


def adam_update(
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
    amsgrad: bool,
    decoupled_weight_decay: bool,
) -> UpdateResult:
    r"""One Adam step (Kingma & Ba 2015, Algorithm 1; AMSGrad: Reddi et al. 2018; AdamW: Loshchilov & Hutter 2019).

    .. math::

        \theta_{t-1} &\leftarrow (1 - \gamma\lambda)\,\theta_{t-1}
            \ \text{(decoupled)} \quad\text{or}\quad
            g_t \leftarrow g_t + \lambda\,\theta_{t-1} \ \text{(L2)} \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
        v_t &= \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \ \text{(AMSGrad)}, \quad v_t \ \text{(otherwise)} \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,
            \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    Framework differences: torch and Algorithm 1 add ``eps`` after the bias
    correction of ``v``; Keras uses the paper's "epsilon hat" form
    (``lr·√(1-β2^t)/(1-β1^t)`` and ``eps`` on the uncorrected ``√v``). AMSGrad
    here keeps the maximum of the raw ``v`` as torch and Keras do; optax takes
    it over the bias-corrected ``v``.
    """
    beta1, beta2 = betas
    p, g = decay_weights(xp, p, g, lr, weight_decay, decoupled_weight_decay)
    exp_avg, exp_avg_sq = moments(xp, state, g, beta1, beta2)
    new_state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    second = exp_avg_sq
    if amsgrad:
        second = xp.maximum(state["max_exp_avg_sq"], exp_avg_sq)
        new_state["max_exp_avg_sq"] = second
    step_size = lr / (1 - beta1**step)
    denom = xp.sqrt(second) / (1 - beta2**step) ** 0.5 + eps
    return p - step_size * exp_avg / denom, new_state


def adam_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    amsgrad: bool = False,
    **_: Any,
) -> Array:
    r""":math:`\gamma / (\sqrt{\hat v_t} + \epsilon)`, the factor applied to :math:`\hat m_t`.

    Shared by Adam, AdamW, NAdam (whose ``v`` is the same moving average) and LAMB.
    """
    second = state["max_exp_avg_sq"] if amsgrad else state["exp_avg_sq"]
    return lr / (xp.sqrt(second) / (1 - betas[1] ** step) ** 0.5 + eps)


def validate_adam_like(hp: HParams) -> None:
    check_lr(hp)
    check_betas(hp)
    check_eps(hp)
    check_weight_decay(hp)


def _validate(hp: HParams) -> None:
    validate_adam_like(hp)
    check_bool(hp, "amsgrad")
    check_bool(hp, "decoupled_weight_decay")


def _state(hp: HParams) -> dict[str, float | None]:
    state: dict[str, float | None] = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
    if hp["amsgrad"]:
        state["max_exp_avg_sq"] = 0.0
    return state


DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "amsgrad": False,
    "decoupled_weight_decay": False,
}

ADAM = Algorithm(
    name="adam",
    title="Adam: bias-corrected moment estimates (AMSGrad and decoupled decay as options)",
    update=adam_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=_state,
    effective_lr=adam_effective_lr,
)

ADAMW = Algorithm(
    name="adamw",
    title="AdamW: Adam with weight decay decoupled from the gradient",
    update=adam_update,
    hparams=tuple(DEFAULTS),
    defaults={**DEFAULTS, "weight_decay": 1e-2, "decoupled_weight_decay": True},
    validate=_validate,
    state=_state,
    effective_lr=adam_effective_lr,
)
