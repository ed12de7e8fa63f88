"""ASGD: averaged stochastic gradient descent (Polyak–Ruppert averaging with a decaying step)."""

from __future__ import annotations

import math
from typing import Any

from adaptim.algorithms._spec import (
    Algorithm,
    Array,
    ArrayOps,
    HParams,
    UpdateResult,
    coupled_weight_decay,
)
from adaptim.algorithms._validation import check_lr, check_range, check_weight_decay


def _scalar_like(like: Array, value: float) -> Array:
    """``value`` as a 0-d array of ``like``'s dtype: torch keeps ``eta`` and ``mu`` in its
    scalar dtype (float32 unless the default dtype is float64) and rounds them there."""
    return like * 0.0 + value


def asgd_update(
    p: Array,
    g: Array,
    state: dict[str, Array],
    *,
    step: float,
    xp: ArrayOps,
    lr: float,
    lambd: float,
    alpha: float,
    t0: float,
    weight_decay: float,
) -> UpdateResult:
    r"""One ASGD step (Polyak & Juditsky 1992, "Acceleration of Stochastic Approximation by
    Averaging"; the schedule of Bottou 2012, "Stochastic Gradient Descent Tricks", §5.3,
    as in Xu 2011, "Towards Optimal One Pass Large Scale Learning with ASGD").

    .. math::

        g_t &\leftarrow g_t + \lambda_2\,\theta_{t-1} \\
        \theta_t &= (1 - \lambda\,\eta_t)\,\theta_{t-1} - \eta_t\, g_t \\
        \bar\theta_t &= \begin{cases} \theta_t & \mu_t = 1 \\
            \bar\theta_{t-1} + \mu_t\,(\theta_t - \bar\theta_{t-1}) & \text{otherwise} \end{cases} \\
        \eta_{t+1} &= \gamma\,/\,(1 + \lambda\gamma t)^{\alpha}, \qquad
        \mu_{t+1} = 1 / \max(1,\ t - t_0)

    with learning rate :math:`\gamma`, decay term :math:`\lambda` (``lambd``),
    power :math:`\alpha`, averaging start :math:`t_0` and L2 weight decay
    :math:`\lambda_2`; :math:`\eta_1 = \gamma`, :math:`\mu_1 = 1`. The
    parameters follow plain SGD with a slowly decaying step (and a shrinkage
    :math:`\lambda\eta_t`); the average :math:`\bar\theta` (``ax``) is what one
    evaluates. It only starts averaging after :math:`t_0` steps (default 1e6:
    with torch's defaults ``ax`` is a copy of the parameters).

    Points where implementations differ:

    * ``eta`` and ``mu`` are state, stored in torch's scalar dtype (float32
      unless the default dtype is float64) and read back from there, so the
      step uses :math:`\eta_t` rounded to that dtype, and a learning rate
      changed by a scheduler takes effect one step late, as in torch.
    * The averaged parameters are only kept, never swapped in: evaluate with
      ``optimizer.state[p]["ax"]`` (torch's ``swa_utils`` does the same for SWA).
      Neither Keras 3 nor optax ship ASGD.
    * torch accepts any ``alpha``; adaptim refuses ``alpha`` outside [0, 1]
      (beyond 1 the steps sum to a finite distance and training stalls).
    * With a ``lr`` given as a float32 tensor, torch computes the ``eta``
      schedule in float32; adaptim computes it in double precision, so
      ``eta`` may differ in its last float32 bit (parity is exact for a float
      ``lr`` and for a float64 tensor).
    """
    eta, mu = state["eta"], state["mu"]
    # At the first step eta holds no value yet (0, its placeholder): torch starts
    # it at lr, rounded to the scalar dtype (mu, exactly 1 then, carries that
    # dtype). A step count set back to 0 by hand keeps the eta torch would read.
    g = coupled_weight_decay(xp, p, g, weight_decay)
    if xp.traced:  # compiled: eta and mu stay 0-d tensors, so no host read breaks the graph
        eta_now = xp.where((step == 1) & (eta == 0), _scalar_like(mu, lr), eta)
        p = xp.axpy(p * (1 - lambd * eta_now), g, -eta_now)
        ax = xp.where(mu == 1, p, state["ax"] + (p - state["ax"]) * mu)
        new_mu = 1 / xp.clip(step - t0, 1.0, math.inf)
    else:
        eta_t = xp.scalar(eta)
        if step == 1 and eta_t == 0:
            eta_t = xp.scalar(_scalar_like(mu, lr))
        mu_t = xp.scalar(mu)
        p = xp.axpy(p * (1 - lambd * eta_t), g, -eta_t)
        ax = p if mu_t == 1 else state["ax"] + (p - state["ax"]) * mu_t
        new_mu = 1 / max(1.0, step - t0)
    new_eta = lr / ((1 + lambd * lr * step) ** alpha)
    return p, {"ax": ax, "eta": _scalar_like(mu, new_eta), "mu": _scalar_like(mu, new_mu)}


def asgd_effective_lr(
    p: Array, state: dict[str, Array], *, step: float, xp: ArrayOps, **_: Any
) -> Array:
    r""":math:`\eta_{t+1}`, the step the next update takes (the same for every coordinate)."""
    return p * 0.0 + float(state["eta"])


def _validate(hp: HParams) -> None:
    check_lr(hp)
    check_range(hp, "lambd", 0.0)
    # The step must decay more slowly than 1/t for averaging to pay off (Polyak &
    # Juditsky need alpha < 1); above 1 the steps sum to a finite distance.
    check_range(hp, "alpha", 0.0, 1.0)
    check_range(hp, "t0", 0.0, finite=False)
    check_weight_decay(hp)


DEFAULTS: dict[str, Any] = {
    "lr": 1e-2,
    "lambd": 1e-4,
    "alpha": 0.75,
    "t0": 1e6,
    "weight_decay": 0.0,
}

ASGD = Algorithm(
    name="asgd",
    class_name="ASGD",
    title="ASGD: SGD with a decaying step and a running (Polyak) average of the iterates",
    update=asgd_update,
    hparams=tuple(DEFAULTS),
    defaults=DEFAULTS,
    validate=_validate,
    state=lambda hp: {"ax": 0.0},
    # eta's real start is lr, which the rule sets on the first step (see above).
    scalar_state={"eta": 0.0, "mu": 1.0},
    effective_lr=asgd_effective_lr,
)
