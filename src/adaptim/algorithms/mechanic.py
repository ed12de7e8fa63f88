r"""Mechanic's scale learner (Cutkosky, Defazio & Mehta 2023), once for both front-ends.

Cutkosky, Defazio & Mehta, "Mechanic: A Learning Rate Tuner", NeurIPS 2023
(arXiv:2306.00144), Algorithm 1, in the form of optax's
``optax.contrib.mechanize`` (optax 0.2.8). Mechanic wraps an optimizer and
learns one scale :math:`s = \sum_i s_i` for its updates; the wrappers
(:class:`adaptim.Mechanic` for torch, :class:`adaptim.numpy.Mechanic`) hold the
reference point and the accumulated descent :math:`D` per parameter, and the
whole method, with where the references differ, is described in
:mod:`adaptim.torch.mechanic`.

What both wrappers share is the online learner of the scales: from the
inner product :math:`h_t = \langle \tilde g_t, D_t\rangle` of the step,
one per :math:`\beta_i = 1 - 10^{-i}`,

.. math::

    m_{t,i} &= \max(\beta_i\, m_{t-1,i},\; |h_t| + \epsilon) \\
    v_{t,i} &= \beta_i^2\, v_{t-1,i} + h_t^2 \\
    r_{t,i} &= \beta_i\, r_{t-1,i} + \operatorname{clip}(h_t, -m_{t-1,i}, m_{t-1,i})\, s_{t,i} \\
    W_{t,i} &= \frac{s_{\mathrm{init}}}{n}\, m_{t,i} + \max(0, r_{t,i}) \\
    s_{t+1,i} &= \frac{W_{t,i}}{\sqrt{v_{t,i}} + \epsilon}

and the decay term :math:`\tilde g_t = g_t + \lambda\, s_t\,
\frac{\lVert g_t\rVert}{\lVert x_t\rVert + \epsilon}\, x_t`, whose factor is
:func:`decay_factor`.
"""

from __future__ import annotations

import math
from typing import Any

from adaptim.algorithms._spec import Array, ArrayOps

#: The learner's arrays, one entry per β (their names in optax's ``MechanicState``).
SCALARS = ("s", "r", "m", "v")


def betas(num_betas: int) -> list[float]:
    r""":math:`\beta_i = 1 - 10^{-i}` for :math:`i = 1 \dots n` (0.9 ... 0.999999 for 6)."""
    return [1.0 - 0.1**i for i in range(1, num_betas + 1)]


def decay_factor(
    weight_decay: float, s_sum: Array, grad_norm: Array, param_norm: Array, eps: float
) -> Array:
    r""":math:`\lambda\, s_t\, \lVert g_t\rVert / (\lVert x_t\rVert + \epsilon)`, the weight of :math:`x_t` in :math:`\tilde g_t`."""
    return weight_decay * s_sum * grad_norm / (param_norm + eps)


def learn_scales(
    scalars: dict[str, Array],
    h: Array,
    beta: Array,
    *,
    s_init: float,
    eps: float,
    xp: ArrayOps,
) -> dict[str, Array]:
    """The learner's arrays after the step with inner product ``h`` (``beta``: :func:`betas` as an array)."""
    s, r, m, v = (scalars[k] for k in SCALARS)
    n = len(beta)
    clipped = xp.where(h > m, m, xp.maximum(h, -m))  # optax clips with the old m
    m = xp.maximum(beta * m, xp.abs(h) + eps)
    v = beta**2 * v + h**2
    r = beta * r + clipped * s
    wealth = (s_init / n) * m + xp.where(r > 0, r, 0.0)
    return {"s": wealth / (xp.sqrt(v) + eps), "r": r, "m": m, "v": v}


def checked_hyperparameters(
    *, weight_decay: float, eps: float, s_init: float, num_betas: int, store_delta: bool
) -> dict[str, Any]:
    """The wrapper's settings as a dict, or a ``ValueError`` naming the first bad one."""
    _check_number("weight_decay", weight_decay, minimum=0.0, strict=False)
    _check_number("eps", eps, minimum=0.0, strict=False)
    _check_number("s_init", s_init, minimum=0.0, strict=True)
    if isinstance(num_betas, bool) or not isinstance(num_betas, int) or num_betas < 1:
        raise ValueError(
            f"Invalid num_betas: {num_betas!r}; expected an integer >= 1 "
            "(the betas are 1 - 10**-i for i = 1 ... num_betas)."
        )
    if not isinstance(store_delta, bool):
        raise ValueError(f"Invalid store_delta: {store_delta!r}; expected True or False.")
    return {
        "weight_decay": weight_decay,
        "eps": eps,
        "s_init": s_init,
        "num_betas": num_betas,
        "store_delta": store_delta,
    }


def _check_number(name: str, value: float, minimum: float, strict: bool) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value > minimum if strict else value >= minimum)
    )
    if not ok:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"Invalid {name}: {value!r}; expected a finite number {bound}.")
