"""RMSprop: steps scaled by a moving average of squared gradients."""

from __future__ import annotations

from typing import Any

from adaptim.algorithms._spec import (
    Algorithm,
    Array,
    ArrayOps,
    HParams,
    UpdateResult,
    coupled_weight_decay,
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
) -> UpdateResult:
    r"""One RMSprop step (Tieleman & Hinton 2012, Coursera lecture 6e; centered: Graves 2013).

    .. math::

        g_t &\leftarrow g_t + \lambda\,\theta_{t-1} \\
        v_t &= \alpha\, v_{t-1} + (1-\alpha)\, g_t^2 \\
        \bar g_t &= \alpha\, \bar g_{t-1} + (1-\alpha)\, g_t
            \quad\text{(centered only)} \\
        \sigma_t &= \sqrt{v_t - \bar g_t^2} + \epsilon \ \text{(centered)},
            \qquad \sqrt{v_t} + \epsilon \ \text{(otherwise)} \\
        b_t &= \mu\, b_{t-1} + g_t / \sigma_t, \qquad
        \theta_t = \theta_{t-1} - \gamma\, b_t \quad (\mu > 0) \\
        \theta_t &= \theta_{t-1} - \gamma\, g_t / \sigma_t \quad (\mu = 0)

    Framework differences: torch uses ``alpha=0.99`` with ``eps`` outside the
    square root and applies ``lr`` after the momentum buffer; Keras 3 uses
    ``rho=0.9`` with ``eps`` inside and ``lr`` inside the buffer; TF1 starts
    ``v`` at ones.
    """
    g = coupled_weight_decay(xp, p, g, weight_decay)
    square_avg = xp.addcmul(state["square_avg"] * alpha, g, g, 1 - alpha)
    new_state = {"square_avg": square_avg}
    if centered:
        grad_avg = xp.lerp(state["grad_avg"], g, 1 - alpha)
        new_state["grad_avg"] = grad_avg
        sigma = xp.sqrt(xp.addcmul(square_avg, grad_avg, grad_avg, -1.0)) + eps
    else:
        sigma = xp.sqrt(square_avg) + eps
    if momentum > 0:
        buf = state["momentum_buffer"] * momentum + g / sigma
        new_state["momentum_buffer"] = buf
        return xp.axpy(p, buf, -lr), new_state
    return p - lr * g / sigma, new_state


def rmsprop_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    eps: float,
    centered: bool,
    **_: Any,
) -> Array:
    r""":math:`\gamma / \sigma_t`: follows the moving average, so it recovers when gradients shrink."""
    square_avg = state["square_avg"]
    if centered:
        square_avg = xp.addcmul(square_avg, state["grad_avg"], state["grad_avg"], -1.0)
    return lr / (xp.sqrt(square_avg) + eps)


def _validate(hp: HParams) -> None:
    check_lr(hp)
    check_range(hp, "alpha", 0.0, 1.0)
    check_eps(hp)
    check_weight_decay(hp)
    check_range(hp, "momentum", 0.0)
    check_bool(hp, "centered")


def _state(hp: HParams) -> dict[str, float | None]:
    state: dict[str, float | None] = {"square_avg": 0.0}
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
}

RMSPROP = Algorithm(
    name="rmsprop",
    title="RMSprop: steps divided by a moving RMS of gradients (plain, centered, momentum)",
    update=rmsprop_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=_state,
    effective_lr=rmsprop_effective_lr,
)
