"""Polynomial-decay averaging of NumPy parameters, as DoG's authors evaluate it.

The NumPy twin of :class:`adaptim.PolynomialAverager` (which averages a
torch model's ``state_dict``); the equation is in
:mod:`adaptim.algorithms.averaging`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from adaptim.algorithms import averaging


class PolynomialAverager:
    r"""Keeps :math:`\bar x_t`, the polynomial-decay average of each array in ``params``.

    Call :meth:`step` after each optimizer step; evaluate with :attr:`averaged`
    (one array per parameter, in order), keep training ``params``.

    Example::

        optimizer = adaptim.numpy.DoG([w, b])
        averager = adaptim.numpy.PolynomialAverager([w, b])
        for grads in batches:
            optimizer.step(grads)
            averager.step()
        evaluate(*averager.averaged)
    """

    def __init__(self, params: Iterable[np.ndarray], gamma: float = 8.0) -> None:
        self.params = list(params)
        for index, p in enumerate(self.params):
            if not isinstance(p, np.ndarray) or not np.issubdtype(p.dtype, np.inexact):
                raise TypeError(
                    f"Invalid params[{index}]: {type(p).__name__}"
                    f"{'' if not isinstance(p, np.ndarray) else f' of dtype {p.dtype}'}; "
                    "expected a floating or complex numpy array."
                )
        self.gamma = averaging.checked_gamma(gamma)
        self.t = 1
        self.averaged = [p.copy() for p in self.params]

    def step(self) -> None:
        """Fold the parameters' current values into the average."""
        weight = averaging.weight(self.t, self.gamma)
        for mean, p in zip(self.averaged, self.params, strict=True):
            mean *= 1 - weight
            mean += weight * p
        self.t += 1

    def reset(self) -> None:
        """Restart the average: the next :meth:`step` sets it to the parameters."""
        self.t = 1

    def state_dict(self) -> dict[str, Any]:
        """``{"t": next step's index, "averaged": [copies of the averages]}``."""
        return {"t": self.t, "averaged": [mean.copy() for mean in self.averaged]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not isinstance(state_dict, Mapping) or not {"t", "averaged"} <= set(state_dict):
            raise ValueError(
                "Invalid state_dict for adaptim.numpy.PolynomialAverager: expected a mapping "
                "with 't' and 'averaged', as PolynomialAverager.state_dict() returns."
            )
        t, saved = state_dict["t"], list(state_dict["averaged"])
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ValueError(f"Invalid state_dict: t = {t!r}; expected an integer >= 1.")
        if [np.shape(a) for a in saved] != [p.shape for p in self.params]:
            raise ValueError(
                f"Invalid state_dict: averages of shapes {[np.shape(a) for a in saved]}; "
                f"the parameters have shapes {[p.shape for p in self.params]}."
            )
        self.averaged = [
            np.array(a, dtype=p.dtype) for a, p in zip(saved, self.params, strict=True)
        ]
        self.t = t
