r"""Polynomial-decay averaging of the iterates (Shamir & Zhang 2013), once for both front-ends.

DoG and LDoG are analysed and evaluated through this average (Ivgi, Hinder &
Carmon 2023). After step :math:`t = 1, 2, \dots`

.. math::

    \bar x_t = (1 - w_t)\,\bar x_{t-1} + w_t\, x_t, \qquad w_t = \frac{1+\gamma}{t+\gamma},

so :math:`\bar x_1 = x_1`; :math:`\gamma = 0` is the uniform average, and the
weight of iterate :math:`i` in :math:`\bar x_t` decays like :math:`(i/t)^\gamma`.
"""

from __future__ import annotations


def weight(t: int, gamma: float) -> float:
    r""":math:`w_t = (1+\gamma)/(t+\gamma)`, the weight of the newest iterate after step ``t``."""
    return (gamma + 1) / (gamma + t)


def checked_gamma(gamma: float) -> float:
    """``gamma`` as a float, or a ``ValueError`` that says what is allowed."""
    if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not gamma >= 0:
        raise ValueError(
            f"Invalid gamma: {gamma!r}; expected a number >= 0 (0: the uniform average of "
            "all iterates; 8, the default: forgets the early ones)."
        )
    return float(gamma)
