"""AdaGrad: per-coordinate learning rates from the sum of squared gradients."""

from __future__ import annotations

from typing import Any, Literal

from adaptim.algorithms._spec import (
    Algorithm,
    Array,
    ArrayOps,
    HParams,
    UpdateResult,
    coupled_weight_decay,
)
from adaptim.algorithms._validation import check_eps, check_lr, check_range, check_weight_decay


def adagrad_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    lr_decay: float,
    weight_decay: float,
    initial_accumulator_value: float,
    eps: float,
) -> UpdateResult:
    r"""One AdaGrad step (Duchi, Hazan & Singer 2011, "Adaptive Subgradient Methods").

    .. math::

        g_t &\leftarrow g_t + \lambda\,\theta_{t-1} \\
        \tilde\gamma_t &= \gamma / (1 + (t-1)\,\eta) \\
        s_t &= s_{t-1} + g_t^2, \qquad s_0 = \text{initial\_accumulator\_value} \\
        \theta_t &= \theta_{t-1} - \tilde\gamma_t\, g_t / (\sqrt{s_t} + \epsilon)

    with learning-rate decay :math:`\eta`. The effective per-coordinate
    learning rate :math:`\tilde\gamma_t/(\sqrt{s_t}+\epsilon)` only ever shrinks,
    which is why AdaGrad stalls on long non-convex runs.

    Framework differences: torch adds ``eps`` outside the square root
    (default 1e-10) and starts the accumulator at 0; Keras 3 and optax put
    ``eps`` inside (1e-7) and start at 0.1.
    """
    g = coupled_weight_decay(xp, p, g, weight_decay)
    clr = lr / (1 + (step - 1) * lr_decay)
    total = xp.addcmul(state["sum"], g, g, 1.0)
    return p - clr * g / (xp.sqrt(total) + eps), {"sum": total}


def adagrad_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    lr_decay: float,
    eps: float,
    **_: Any,
) -> Array:
    r""":math:`\tilde\gamma_t / (\sqrt{s_t} + \epsilon)`: it can only shrink as ``sum`` grows."""
    return lr / (1 + (step - 1) * lr_decay) / (xp.sqrt(state["sum"]) + eps)


def _validate(hp: HParams) -> None:
    check_lr(hp)
    check_range(hp, "lr_decay", 0.0)
    check_weight_decay(hp)
    check_range(hp, "initial_accumulator_value", 0.0)
    check_eps(hp)


def _sparse(hp: HParams) -> Literal["rows", "dense"]:
    if hp["weight_decay"] != 0:
        raise RuntimeError(
            "weight_decay option is not compatible with sparse gradients "
            f"(got weight_decay={hp['weight_decay']!r}); set weight_decay=0 for sparse parameters, "
            "for example in a separate param group."
        )
    return "rows"


DEFAULTS: dict[str, Any] = {
    "lr": 1e-2,
    "lr_decay": 0.0,
    "weight_decay": 0.0,
    "initial_accumulator_value": 0.0,
    "eps": 1e-10,
}

ADAGRAD = Algorithm(
    name="adagrad",
    title="AdaGrad: per-coordinate step sizes from the running sum of squared gradients",
    update=adagrad_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=lambda hp: {"sum": float(hp["initial_accumulator_value"])},
    state_at_construction=True,
    effective_lr=adagrad_effective_lr,
    sparse=_sparse,
)
