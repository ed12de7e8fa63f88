"""Yogi: Adam whose second moment moves additively, by the sign of its error."""

from __future__ import annotations

from typing import Any

from adaptim.algorithms._spec import Algorithm, Array, ArrayOps, HParams, UpdateResult
from adaptim.algorithms._validation import check_betas, check_bool, check_eps, check_lr, check_range
from adaptim.algorithms.lion import sign


def yogi_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    initial_accumulator_value: float,
    bias_correction: bool,
) -> UpdateResult:
    r"""One Yogi step (Zaheer et al. 2018, "Adaptive Methods for Nonconvex Optimization",
    NeurIPS, Algorithm 2).

    .. math::

        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t \\
        v_t &= v_{t-1} - (1-\beta_2)\,\operatorname{sign}(v_{t-1} - g_t^2)\, g_t^2 \\
        \theta_t &= \theta_{t-1} - \gamma\, \frac{m_t/(1-\beta_1^t)}
            {\sqrt{v_t/(1-\beta_2^t)} + \epsilon}

    Adam's :math:`v_t - v_{t-1} = -(1-\beta_2)(v_{t-1} - g_t^2)` is
    multiplicative in :math:`v_{t-1}`; Yogi's change has the same sign but is
    at most :math:`(1-\beta_2)g_t^2`, so the effective learning rate cannot
    jump when gradients grow rare.

    Where frameworks differ (see :mod:`adaptim.flavors`):

    * ``optax`` (the default; ``optax.yogi``): both ``exp_avg`` and
      ``exp_avg_sq`` start at ``initial_accumulator_value`` = 1e-6, and both
      are bias corrected as in Adam (``bias_correction=True``); ε = 1e-3.
      optax has no default learning rate; adaptim's is the paper's 1e-2.
    * ``paper``: Algorithm 2 starts from :math:`m_0 = v_0 = 0`
      (``initial_accumulator_value=0``) and has no bias correction
      (``bias_correction=False``): :math:`\theta_t = \theta_{t-1} -
      \gamma m_t/(\sqrt{v_t} + \epsilon)`.

    torch.optim has no Yogi.
    """
    beta1, beta2 = betas
    exp_avg = xp.lerp(state["exp_avg"], g, 1 - beta1)
    previous = state["exp_avg_sq"]
    square = g * g
    exp_avg_sq = previous - (1 - beta2) * sign(xp, previous - square) * square
    first, second = exp_avg, exp_avg_sq
    if bias_correction:
        first = exp_avg / (1 - beta1**step)
        second = exp_avg_sq / (1 - beta2**step)
    new_state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    return p - lr * first / (xp.sqrt(second) + eps), new_state


def yogi_effective_lr(
    p: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    bias_correction: bool = True,
    **_: Any,
) -> Array:
    r""":math:`\gamma / (\sqrt{\hat v_t} + \epsilon)`, the factor applied to :math:`\hat m_t`."""
    bias2 = 1 - betas[1] ** step if bias_correction else 1.0
    return lr / (xp.sqrt(state["exp_avg_sq"] / bias2) + eps)


def _validate(hp: HParams) -> None:
    check_lr(hp)
    check_betas(hp)
    check_eps(hp)
    check_range(hp, "initial_accumulator_value", 0.0)
    check_bool(hp, "bias_correction")


DEFAULTS: dict[str, Any] = {
    "lr": 1e-2,
    "betas": (0.9, 0.999),
    "eps": 1e-3,
    "initial_accumulator_value": 1e-6,
    "bias_correction": True,
}


def _state(hp: HParams) -> dict[str, float | None]:
    start = float(hp["initial_accumulator_value"])
    return {"exp_avg": start, "exp_avg_sq": start}


YOGI = Algorithm(
    name="yogi",
    class_name="Yogi",
    default_flavor="optax",
    title="Yogi: Adam with an additive, sign-controlled second moment",
    update=yogi_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=_state,
    effective_lr=yogi_effective_lr,
)
