r"""Polynomial-decay averaging of a model's weights (Shamir & Zhang 2013), as DoG's authors use it.

DoG and LDoG (:mod:`adaptim.torch.dog`) have no step-size decay; their
guarantees, and their good results in Ivgi, Hinder & Carmon 2023, are for the
averaged iterate. :class:`PolynomialAverager` keeps that average in a copy of
the model, with the semantics and ``state_dict`` of
``dog.PolynomialDecayAverager`` (``dog-optimizer`` 1.0.3).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from adaptim.algorithms import averaging


class PolynomialAverager:
    r"""A copy of ``model`` holding the polynomial-decay average of its weights.

    After the optimizer's step ``t`` (``t`` = 1, 2, ...), :meth:`step` updates
    every floating entry of the model's ``state_dict`` (parameters and
    buffers such as batch norm's running statistics):

    .. math::

        \bar x_t = \Big(1 - \frac{1+\gamma}{t+\gamma}\Big)\,\bar x_{t-1}
                 + \frac{1+\gamma}{t+\gamma}\, x_t

    so :math:`\bar x_1 = x_1`; :math:`\gamma = 0` is the uniform average of
    all iterates, and a larger :math:`\gamma` forgets the early ones faster
    (the weight of iterate :math:`i` decays like :math:`(i/t)^\gamma`).
    Integer buffers (batch norm's ``num_batches_tracked``) are copied, not
    averaged. Evaluate :attr:`averaged_model`; train ``model``.

    Same arguments, defaults (``gamma=8``), attributes (``t``, ``gamma``,
    ``averaged_model``, ``base_model``, :meth:`reset`) and ``state_dict``
    (``{"t", "av_model"}``) as ``dog.PolynomialDecayAverager`` of
    ``dog-optimizer`` 1.0.3, so a checkpoint moves between them. Differences:
    the average follows the model to another device at any step (the
    reference moves it on the first step only), and every non-floating buffer
    is copied (the reference copies ``int64`` ones and fails on others).

    Example::

        averager = adaptim.PolynomialAverager(model)
        for batch in data:
            loss(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad()
            averager.step()
        evaluate(averager.averaged_model)
    """

    def __init__(self, model: nn.Module, gamma: float = 8.0) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"Invalid model: {type(model).__name__}; expected a torch.nn.Module "
                "(its state_dict is averaged)."
            )
        self.gamma = averaging.checked_gamma(gamma)
        self.t = 1
        self.model = model
        self.av_model = copy.deepcopy(model)

    @torch.no_grad()
    def step(self) -> None:
        """Fold the model's current weights into the average (call after each optimizer step)."""
        current = self.model.state_dict()
        self._follow_device(current)
        average = self.av_model.state_dict()
        weight = averaging.weight(self.t, self.gamma)
        for key, value in current.items():
            target = average[key]
            if not (target.is_floating_point() or target.is_complex()):
                target.copy_(value)  # counters, masks: the latest value
                continue
            # (the reference's two in-place operations, kept for bit-identical averages)
            target.mul_(1 - weight).add_(value, alpha=weight)
        self.t += 1

    def _follow_device(self, current: Mapping[str, torch.Tensor]) -> None:
        here = next(iter(current.values()), None)
        there = next(iter(self.av_model.state_dict().values()), None)
        if here is not None and there is not None and here.device != there.device:
            self.av_model.to(here.device)

    def reset(self) -> None:
        """Restart the average: the next :meth:`step` sets it to the model's weights."""
        self.t = 1

    @property
    def averaged_model(self) -> nn.Module:
        """The model holding the averaged weights (evaluate this one)."""
        return self.av_model

    @property
    def base_model(self) -> nn.Module:
        """The model being trained."""
        return self.model

    def state_dict(self) -> dict[str, Any]:
        """``{"t": next step's index, "av_model": the averaged model's state_dict}``.

        To save the averaged weights as a loadable model checkpoint, save
        ``averager.averaged_model.state_dict()`` instead.
        """
        return {"t": self.t, "av_model": self.av_model.state_dict()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` (or the reference's) returned."""
        if not isinstance(state_dict, Mapping) or not {"t", "av_model"} <= set(state_dict):
            raise ValueError(
                "Invalid state_dict for adaptim.PolynomialAverager: expected a mapping with 't' "
                "and 'av_model', as PolynomialAverager.state_dict() returns."
            )
        t = state_dict["t"]
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ValueError(f"Invalid state_dict: t = {t!r}; expected an integer >= 1.")
        self.av_model.load_state_dict(state_dict["av_model"])
        self.t = t
