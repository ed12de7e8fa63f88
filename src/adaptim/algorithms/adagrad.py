"""AdaGrad: per-coordinate learning rates from the sum of squared gradients."""

from __future__ import annotations

from typing import Any, Literal

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
    eps_inside_sqrt: bool = False,
    decoupled_weight_decay: bool = False,
) -> UpdateResult:
    r"""One AdaGrad step (Duchi, Hazan & Singer 2011, "Adaptive Subgradient Methods").

    .. math::

        g_t &\leftarrow g_t + \lambda\,\theta_{t-1} \\
        \tilde\gamma_t &= \gamma / (1 + (t-1)\,\eta) \\
        s_t &= s_{t-1} + g_t^2, \qquad s_0 = \text{initial\_accumulator\_value} \\
        \theta_t &= \theta_{t-1} - \tilde\gamma_t\, g_t / (\sqrt{s_t} + \epsilon)
            \qquad\text{or, with eps\_inside\_sqrt,}\qquad
            \theta_{t-1} - \tilde\gamma_t\, g_t / \sqrt{s_t + \epsilon}

    with learning-rate decay :math:`\eta`. The effective per-coordinate
    learning rate :math:`\tilde\gamma_t/(\sqrt{s_t}+\epsilon)` only ever shrinks,
    which is why AdaGrad stalls on long non-convex runs.

    Options where frameworks differ (see :mod:`adaptim.flavors`):

    * ``eps_inside_sqrt``: torch (and Duchi et al.'s δ) add ``eps`` outside the
      square root, default 1e-10; Keras 3 and optax add it inside, 1e-7.
      TF1's ``AdagradOptimizer`` has no ``eps`` at all (``eps=0``).
    * ``initial_accumulator_value``: 0 in torch and the paper, 0.1 in Keras 3,
      optax and TF1.
    * ``decoupled_weight_decay``: torch adds ``λθ`` to the gradient; Keras
      shrinks ``θ`` by ``γλ`` before the step.
    """
    p, g = decay_weights(xp, p, g, lr, weight_decay, decoupled_weight_decay)
    clr = lr / (1 + (step - 1) * lr_decay)
    total = xp.addcmul(state["sum"], g, g, 1.0)
    denom = xp.sqrt(total + eps) if eps_inside_sqrt else xp.sqrt(total) + eps
    return xp.addcdiv(p, g, denom, -clr), {"sum": total}


def adagrad_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    lr_decay: float,
    eps: float,
    eps_inside_sqrt: bool = False,
    **_: Any,
) -> Array:
    r""":math:`\tilde\gamma_t / (\sqrt{s_t} + \epsilon)`: it can only shrink as ``sum`` grows."""
    total = state["sum"]
    denom = xp.sqrt(total + eps) if eps_inside_sqrt else xp.sqrt(total) + eps
    return lr / (1 + (step - 1) * lr_decay) / denom


def _validate(hp: HParams) -> None:
    check_lr(hp)
    check_range(hp, "lr_decay", 0.0)
    check_weight_decay(hp)
    check_range(hp, "initial_accumulator_value", 0.0)
    check_eps(hp)
    check_bool(hp, "eps_inside_sqrt")
    check_bool(hp, "decoupled_weight_decay")


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
    "eps_inside_sqrt": False,
    "decoupled_weight_decay": False,
}

ADAGRAD = Algorithm(
    name="adagrad",
    class_name="Adagrad",
    title="AdaGrad: per-coordinate step sizes from the running sum of squared gradients",
    update=adagrad_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=lambda hp: {"sum": float(hp["initial_accumulator_value"])},
    state_at_construction=True,
    effective_lr=adagrad_effective_lr,
    sparse=_sparse,
    complex_arithmetic="weight_decay",  # torch: g + λθ before view_as_real
)
