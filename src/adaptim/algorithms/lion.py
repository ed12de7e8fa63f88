"""Lion: the sign of an interpolated momentum, found by program search."""

from __future__ import annotations

from typing import Any

from adaptim.algorithms._spec import Algorithm, Array, ArrayOps, HParams, UpdateResult, constant_lr
from adaptim.algorithms._validation import check_betas, check_lr, check_weight_decay


def sign(xp: ArrayOps, x: Array) -> Array:
    """``sign(x)``: -1, 0 or 1 (NaN stays NaN), from comparisons, which every ``xp`` records."""
    return xp.where(x > 0, 1.0, xp.where(x < 0, -1.0, x * 0))


def lion_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
) -> UpdateResult:
    r"""One Lion step (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2).

    .. math::

        c_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
        \theta_t &= \theta_{t-1} - \gamma\,\bigl(\operatorname{sign}(c_t)
            + \lambda\,\theta_{t-1}\bigr) \\
        m_t &= \beta_2 m_{t-1} + (1-\beta_2)\, g_t

    Every coordinate moves by exactly :math:`\gamma` (plus the decay), so
    good learning rates are 3-10 times smaller than AdamW's and weight decays
    3-10 times larger. The state is the one moving average ``exp_avg``
    (:math:`m`), half of Adam's.

    Where frameworks differ (see :mod:`adaptim.flavors`):

    * ``optax`` (the default; ``optax.lion``): the update above, with
      :math:`\lambda` = 1e-3 by default and no default learning rate
      (adaptim's 1e-4 follows the paper's advice: a tenth of AdamW's 1e-3).
    * ``keras`` (Keras 3 ``keras.optimizers.Lion``): lr 1e-3, no weight
      decay by default; Keras' base optimizer applies the decay first,
      :math:`\theta \leftarrow (1 - \gamma\lambda)\theta`, then subtracts
      :math:`\gamma\operatorname{sign}(c_t)`, the same arithmetic. Keras
      also refuses :math:`\beta_1 = 0`; adaptim allows it (sign descent).
    * ``paper``: Algorithm 2 is the update above exactly; the paper prints
      :math:`\beta_1 = 0.9, \beta_2 = 0.99` and no default :math:`\gamma` or
      :math:`\lambda`, so the flavor keeps optax's.

    torch.optim has no Lion; ``sign(0) = 0`` as in all three.
    """
    beta1, beta2 = betas
    exp_avg = state["exp_avg"]
    direction = sign(xp, xp.lerp(exp_avg, g, 1 - beta1))
    if weight_decay != 0:
        direction = direction + weight_decay * p
    new_state = {"exp_avg": xp.lerp(exp_avg, g, 1 - beta2)}
    return p - lr * direction, new_state


def _validate(hp: HParams) -> None:
    check_lr(hp)
    check_betas(hp)
    check_weight_decay(hp)


DEFAULTS: dict[str, Any] = {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 1e-3}

LION = Algorithm(
    name="lion",
    class_name="Lion",
    default_flavor="optax",
    title="Lion: steps of the sign of an interpolated momentum (half of Adam's state)",
    update=lion_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=lambda hp: {"exp_avg": 0.0},
    effective_lr=constant_lr,
)
