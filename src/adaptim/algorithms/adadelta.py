"""Adadelta: RMSprop with units corrected by a moving average of squared updates."""

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


def adadelta_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    rho: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool = False,
) -> UpdateResult:
    r"""One Adadelta step (Zeiler 2012, "ADADELTA: An Adaptive Learning Rate Method", Alg. 1).

    .. math::

        g_t &\leftarrow g_t + \lambda\,\theta_{t-1} \\
        v_t &= \rho\, v_{t-1} + (1-\rho)\, g_t^2 \\
        \Delta_t &= \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t \\
        u_t &= \rho\, u_{t-1} + (1-\rho)\, \Delta_t^2 \\
        \theta_t &= \theta_{t-1} - \gamma\, \Delta_t

    ``v`` is stored as ``square_avg`` and ``u`` as ``acc_delta``. The paper has
    no learning rate (:math:`\gamma = 1`, torch's default).

    The arithmetic is the same in torch, Keras 3 and optax; the frameworks
    differ in defaults only (see :mod:`adaptim.flavors`): torch ``lr=1``,
    ``rho=0.9``, ``eps=1e-6``; Keras 3 ``lr=1e-3``, ``rho=0.95``, ``eps=1e-7``;
    optax ``rho=0.9``, ``eps=1e-6`` and no default ``lr`` (``None`` there means
    no scaling at all, which *ascends*; adaptim's optax flavor uses ``lr=1``);
    TF1 ``lr=1e-3``, ``rho=0.95``, ``eps=1e-8``; Zeiler ``rho=0.95``, ``eps=1e-6``.
    ``decoupled_weight_decay`` shrinks ``θ`` by ``γλ`` before the step (Keras);
    otherwise ``λθ`` joins the gradient (torch, and optax's ``adadelta``, whose
    ``add_decayed_weights`` comes before ``scale_by_adadelta``).
    """
    p, g = decay_weights(xp, p, g, lr, weight_decay, decoupled_weight_decay)
    square_avg = xp.addcmul(state["square_avg"] * rho, g, g, 1 - rho)
    delta = xp.sqrt(state["acc_delta"] + eps) / xp.sqrt(square_avg + eps) * g
    acc_delta = xp.addcmul(state["acc_delta"] * rho, delta, delta, 1 - rho)
    return xp.axpy(p, delta, -lr), {"square_avg": square_avg, "acc_delta": acc_delta}


def adadelta_effective_lr(
    p: Array, state: dict[str, Array], *, step: float, xp: ArrayOps, lr: float, eps: float, **_: Any
) -> Array:
    r""":math:`\gamma\,\sqrt{u_t + \epsilon} / \sqrt{v_t + \epsilon}`, the factor applied to the next gradient."""
    return lr * xp.sqrt(state["acc_delta"] + eps) / xp.sqrt(state["square_avg"] + eps)


def _validate(hp: HParams) -> None:
    check_lr(hp)
    check_range(hp, "rho", 0.0, 1.0)
    check_eps(hp)
    check_weight_decay(hp)
    check_bool(hp, "decoupled_weight_decay")


DEFAULTS: dict[str, Any] = {
    "lr": 1.0,
    "rho": 0.9,
    "eps": 1e-6,
    "weight_decay": 0.0,
    "decoupled_weight_decay": False,
}

ADADELTA = Algorithm(
    name="adadelta",
    class_name="Adadelta",
    title="Adadelta: RMSprop whose step is rescaled by the RMS of past updates",
    update=adadelta_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=lambda hp: {"square_avg": 0.0, "acc_delta": 0.0},
    effective_lr=adadelta_effective_lr,
    complex_arithmetic="weight_decay",  # torch: g + λθ before view_as_real
)
