"""Adam, AMSGrad and AdamW: bias-corrected first and second moment estimates."""

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
from adaptim.algorithms._validation import (
    check_betas,
    check_bool,
    check_choice,
    check_eps,
    check_lr,
    check_weight_decay,
)


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
    epsilon_hat: bool = False,
    amsgrad_max: str = "raw",
    bias_correction: bool = True,
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

    Options where frameworks differ (see :mod:`adaptim.flavors`):

    * ``epsilon_hat``: the form of Kingma & Ba's Section 2 remark, used by
      Keras 3 and TF1,
      :math:`\theta_t = \theta_{t-1} - \gamma\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
      \frac{m_t}{\sqrt{\hat v_t} + \hat\epsilon}`: ``eps`` is added to the
      *uncorrected* root, so it weighs :math:`1/\sqrt{1-\beta_2^t}` times less
      early on. torch, optax and Algorithm 1 add it after the bias correction.
    * ``amsgrad_max``: ``"raw"`` keeps :math:`\max(\hat v_{t-1}, v_t)` (torch,
      Keras 3, Reddi et al.); ``"corrected"`` keeps the maximum of the
      bias-corrected :math:`v_t/(1-\beta_2^t)` (optax's ``amsgrad``), stored in
      ``max_exp_avg_sq`` and used as it is.
    * ``bias_correction``: ``False`` drops both bias corrections (Reddi et al.
      2018, Algorithm 2, prints AMSGrad without them).
    * ``decoupled_weight_decay`` (AdamW): torch shrinks ``θ`` by ``γλ`` before
      the step, as Keras 3 does for every optimizer; optax's ``adamw`` adds
      ``λθ`` to the Adam direction before scaling by ``γ``, the same update.
      ``weight_decay`` defaults: torch 1e-2, Keras 4e-3, optax 1e-4.
    """
    beta1, beta2 = betas
    p, g = decay_weights(xp, p, g, lr, weight_decay, decoupled_weight_decay)
    exp_avg, exp_avg_sq = moments(xp, state, g, beta1, beta2)
    new_state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    bias1 = 1 - beta1**step if bias_correction else 1.0
    bias2 = 1 - beta2**step if bias_correction else 1.0
    second = exp_avg_sq
    if amsgrad and amsgrad_max == "corrected":
        corrected = xp.maximum(state["max_exp_avg_sq"], exp_avg_sq / bias2)
        new_state["max_exp_avg_sq"] = corrected
        if epsilon_hat:
            scale = lr * bias2**0.5 / bias1
            return xp.addcdiv(p, exp_avg, xp.sqrt(corrected * bias2) + eps, -scale), new_state
        return xp.addcdiv(p, exp_avg, xp.sqrt(corrected) + eps, -(lr / bias1)), new_state
    if amsgrad:
        second = xp.maximum(state["max_exp_avg_sq"], exp_avg_sq)
        new_state["max_exp_avg_sq"] = second
    if epsilon_hat:
        step_size = lr * bias2**0.5 / bias1
        return xp.addcdiv(p, exp_avg, xp.sqrt(second) + eps, -step_size), new_state
    step_size = lr / bias1
    denom = xp.sqrt(second) / bias2**0.5 + eps
    return xp.addcdiv(p, exp_avg, denom, -step_size), new_state


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
    epsilon_hat: bool = False,
    amsgrad_max: str = "raw",
    bias_correction: bool = True,
    **_: Any,
) -> Array:
    r""":math:`\gamma / (\sqrt{\hat v_t} + \epsilon)`, the factor applied to :math:`\hat m_t`.

    Shared by Adam, AdamW, NAdam (whose ``v`` is the same moving average) and LAMB.
    """
    bias2 = 1 - betas[1] ** step if bias_correction else 1.0
    second = state["max_exp_avg_sq"] if amsgrad else state["exp_avg_sq"]
    if amsgrad and amsgrad_max == "corrected":
        second = second * bias2
    if epsilon_hat:
        return lr * bias2**0.5 / (xp.sqrt(second) + eps)
    return lr / (xp.sqrt(second) / bias2**0.5 + eps)


def validate_adam_like(hp: HParams) -> None:
    check_lr(hp)
    check_betas(hp)
    check_eps(hp)
    check_weight_decay(hp)


def _validate(hp: HParams) -> None:
    validate_adam_like(hp)
    check_bool(hp, "amsgrad")
    check_bool(hp, "decoupled_weight_decay")
    check_bool(hp, "epsilon_hat")
    check_choice(hp, "amsgrad_max", ("raw", "corrected"))
    check_bool(hp, "bias_correction")


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
    "epsilon_hat": False,
    "amsgrad_max": "raw",
    "bias_correction": True,
}

ADAM = Algorithm(
    name="adam",
    class_name="Adam",
    title="Adam: bias-corrected moment estimates (AMSGrad and decoupled decay as options)",
    update=adam_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=_state,
    effective_lr=adam_effective_lr,
    complex_arithmetic="weight_decay",  # torch: g + λθ before view_as_real
)

ADAMW = Algorithm(
    name="adamw",
    class_name="AdamW",
    title="AdamW: Adam with weight decay decoupled from the gradient",
    update=adam_update,
    hparams=tuple(DEFAULTS),
    defaults={**DEFAULTS, "weight_decay": 1e-2, "decoupled_weight_decay": True},
    validate=_validate,
    state=_state,
    effective_lr=adam_effective_lr,
    complex_arithmetic="weight_decay",  # torch: g + λθ before view_as_real
)
