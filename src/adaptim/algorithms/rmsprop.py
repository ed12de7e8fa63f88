"""RMSprop: steps scaled by a moving average of squared gradients."""

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
    check_bool,
    check_eps,
    check_lr,
    check_range,
    check_weight_decay,
)


def rmsprop_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    eps_inside_sqrt: bool = False,
    lr_in_momentum: bool = False,
    initial_accumulator_value: float = 0.0,
    decoupled_weight_decay: bool = False,
) -> UpdateResult:
    r"""One RMSprop step (Tieleman & Hinton 2012, Coursera lecture 6e; centered: Graves 2013).

    .. math::

        g_t &\leftarrow g_t + \lambda\,\theta_{t-1} \\
        v_t &= \alpha\, v_{t-1} + (1-\alpha)\, g_t^2,
            \qquad v_0 = \text{initial\_accumulator\_value} \\
        \bar g_t &= \alpha\, \bar g_{t-1} + (1-\alpha)\, g_t
            \quad\text{(centered only)} \\
        \sigma_t &= \sqrt{v_t - \bar g_t^2} + \epsilon \ \text{(centered)},
            \qquad \sqrt{v_t} + \epsilon \ \text{(otherwise)} \\
        b_t &= \mu\, b_{t-1} + g_t / \sigma_t, \qquad
        \theta_t = \theta_{t-1} - \gamma\, b_t \quad (\mu > 0) \\
        \theta_t &= \theta_{t-1} - \gamma\, g_t / \sigma_t \quad (\mu = 0)

    Options where frameworks differ (see :mod:`adaptim.flavors`):

    * ``alpha`` (Keras' ``rho``, optax's ``decay``): 0.99 in torch, 0.9 in
      Keras 3, optax, TF1 and the lecture.
    * ``eps_inside_sqrt``: :math:`\sigma_t = \sqrt{v_t (-\bar g_t^2) + \epsilon}`, as
      Keras 3 (1e-7), optax (1e-8, ``eps_in_sqrt=True``) and TF1 (1e-10) do;
      torch adds ``eps`` outside (1e-8).
    * ``lr_in_momentum``: :math:`b_t = \mu b_{t-1} + \gamma g_t/\sigma_t`,
      :math:`\theta_t = \theta_{t-1} - b_t` (Keras 3, optax's ``trace`` after
      the learning-rate scaling, TF1, Graves 2013). It differs from torch's form
      once ``lr`` changes during training.
    * ``initial_accumulator_value``: :math:`v_0`; 0, but 1 in TF1's
      ``RMSPropOptimizer`` (optax's ``initial_scale``).
    * ``decoupled_weight_decay``: torch adds ``λθ`` to the gradient; Keras
      shrinks ``θ`` by ``γλ`` before the step.
    """
    p, g = decay_weights(xp, p, g, lr, weight_decay, decoupled_weight_decay)
    square_avg = xp.addcmul(state["square_avg"] * alpha, g, g, 1 - alpha)
    new_state = {"square_avg": square_avg}
    if centered:
        grad_avg = xp.lerp(state["grad_avg"], g, 1 - alpha)
        new_state["grad_avg"] = grad_avg
        variance = xp.addcmul(square_avg, grad_avg, grad_avg, -1.0)
    else:
        variance = square_avg
    sigma = xp.sqrt(variance + eps) if eps_inside_sqrt else xp.sqrt(variance) + eps
    if momentum > 0:
        if lr_in_momentum:
            buf = state["momentum_buffer"] * momentum + lr * g / sigma
            new_state["momentum_buffer"] = buf
            return p - buf, new_state
        buf = xp.addcdiv(state["momentum_buffer"] * momentum, g, sigma, 1.0)
        new_state["momentum_buffer"] = buf
        return xp.axpy(p, buf, -lr), new_state
    return xp.addcdiv(p, g, sigma, -lr), new_state


def rmsprop_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    eps: float,
    centered: bool,
    eps_inside_sqrt: bool = False,
    **_: Any,
) -> Array:
    r""":math:`\gamma / \sigma_t`: follows the moving average, so it recovers when gradients shrink."""
    square_avg = state["square_avg"]
    if centered:
        square_avg = xp.addcmul(square_avg, state["grad_avg"], state["grad_avg"], -1.0)
    if eps_inside_sqrt:
        return lr / xp.sqrt(square_avg + eps)
    return lr / (xp.sqrt(square_avg) + eps)


def _validate(hp: HParams) -> None:
    check_lr(hp)
    check_range(hp, "alpha", 0.0, 1.0)
    check_eps(hp)
    check_weight_decay(hp)
    check_range(hp, "momentum", 0.0)
    check_bool(hp, "centered")
    check_bool(hp, "eps_inside_sqrt")
    check_bool(hp, "lr_in_momentum")
    check_range(hp, "initial_accumulator_value", 0.0)
    check_bool(hp, "decoupled_weight_decay")


def _state(hp: HParams) -> dict[str, float | None]:
    state: dict[str, float | None] = {"square_avg": float(hp["initial_accumulator_value"])}
    if hp["momentum"] > 0:
        state["momentum_buffer"] = 0.0
    if hp["centered"]:
        state["grad_avg"] = 0.0
    return state


DEFAULTS: dict[str, Any] = {
    "lr": 1e-2,
    "alpha": 0.99,
    "eps": 1e-8,
    "weight_decay": 0.0,
    "momentum": 0.0,
    "centered": False,
    "eps_inside_sqrt": False,
    "lr_in_momentum": False,
    "initial_accumulator_value": 0.0,
    "decoupled_weight_decay": False,
}

RMSPROP = Algorithm(
    name="rmsprop",
    class_name="RMSprop",
    title="RMSprop: steps divided by a moving RMS of gradients (plain, centered, momentum)",
    update=rmsprop_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=_state,
    effective_lr=rmsprop_effective_lr,
    complex_arithmetic="weight_decay",  # torch: g + λθ before view_as_real
)
