"""Stochastic gradient descent with heavy-ball or Nesterov momentum."""

from __future__ import annotations

from typing import Any, Literal

from adaptim.algorithms._spec import (
    Algorithm,
    Array,
    ArrayOps,
    HParams,
    UpdateResult,
    constant_lr,
    coupled_weight_decay,
)
from adaptim.algorithms._validation import check_bool, check_lr, check_range, check_weight_decay


def sgd_update(
    p: Array,
    g: Array,
    state: dict[str, Array | None],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
) -> UpdateResult:
    r"""One SGD step (Robbins & Monro 1951; momentum: Polyak 1964; Nesterov: Sutskever et al. 2013).

    .. math::

        g_t &\leftarrow g_t + \lambda\,\theta_{t-1} \\
        b_t &= \begin{cases} g_t & t = 1 \\ \mu\, b_{t-1} + (1-\tau)\, g_t & t > 1 \end{cases} \\
        d_t &= \begin{cases} g_t + \mu\, b_t & \text{nesterov} \\ b_t & \text{otherwise} \end{cases} \\
        \theta_t &= \theta_{t-1} - \gamma\, d_t

    with learning rate :math:`\gamma`, momentum :math:`\mu`, dampening :math:`\tau`
    and weight decay :math:`\lambda`. Without momentum :math:`d_t = g_t`.

    Framework differences: torch seeds the buffer with the first gradient
    (no dampening on step 1) and applies the learning rate after the buffer;
    Keras and optax put the learning rate inside the buffer, which differs once
    the learning rate changes during training.
    """
    g = coupled_weight_decay(xp, p, g, weight_decay)
    new_state: dict[str, Array] = {}
    if momentum != 0:
        buf = state["momentum_buffer"]
        buf = g if buf is None else xp.axpy(buf * momentum, g, 1 - dampening)
        new_state["momentum_buffer"] = buf
        g = xp.axpy(g, buf, momentum) if nesterov else buf
    return xp.axpy(p, g, -lr), new_state


def _validate(hp: HParams) -> None:
    check_lr(hp)
    check_range(hp, "momentum", 0.0)
    check_range(hp, "dampening", 0.0, 1.0)
    check_weight_decay(hp)
    check_bool(hp, "nesterov")
    if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
        raise ValueError(
            "Invalid combination: nesterov=True requires momentum > 0 and dampening = 0 "
            f"(got momentum={hp['momentum']!r}, dampening={hp['dampening']!r})."
        )


def _state(hp: HParams) -> dict[str, float | None]:
    return {"momentum_buffer": None} if hp["momentum"] != 0 else {}


def _sparse(hp: HParams) -> Literal["rows", "dense"]:
    # Untouched rows see p - lr * 0 and a buffer scaled by momentum in either
    # form, so densifying changes no number; "rows" only saves the work.
    return "rows" if hp["momentum"] == 0 and hp["weight_decay"] == 0 else "dense"


DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "momentum": 0.0,
    "dampening": 0.0,
    "weight_decay": 0.0,
    "nesterov": False,
}

SGD = Algorithm(
    name="sgd",
    class_name="SGD",
    title="SGD with optional heavy-ball or Nesterov momentum",
    update=sgd_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=_state,
    step=False,
    effective_lr=constant_lr,
    sparse=_sparse,
    complex_arithmetic="all",  # torch's SGD adds complex tensors as they are
    lazy_state=True,  # torch's SGD makes the momentum buffer inside its loop
)
