"""SparseAdam, Muon, Mechanic and averaged DoG as the lab runs them, on any problem's parameters.

**Mechanic** wraps an optimizer instance; the lab builds every optimizer from
parameters and its hyperparameters, so :class:`MechanicAdam` builds the
:class:`adaptim.Adam` it wraps, and carries Adam's ``algorithm`` record: its
hyperparameters, flavors and ``--set`` names are Adam's, and Mechanic's own
stay at their defaults (the paper's).

**Muon**: the matrices with Muon, every other parameter with AdamW. torch's Muon takes 2-D parameters only and leaves the rest (biases, norm
scales, convolution kernels) to a second optimizer the user builds; the lab
hands one optimizer all of a problem's parameters. It follows the rule
Keras 3's ``keras.optimizers.Muon`` documents instead: a parameter that is not
2-D is stepped with AdamW at the same learning rate (Keras' ``adam_lr_ratio``
of 1), here :class:`adaptim.AdamW` with torch's defaults. The learning rate a
study tunes (and a schedule changes) drives both.

**SparseAdam**: torch's refuses dense gradients, and every built-in problem
has them. The lab converts each gradient to a sparse one over its first axis
before the step, as torch's documentation suggests for "semantically sparse"
gradients: a row whose gradient is all zeros (a feature absent from the batch
in ``logreg-sparse``) keeps its parameters and moments, as with an
``nn.Embedding(sparse=True)``; on a dense layer it is Adam in the "epsilon hat"
form.

**DoG and LDoG** have no step-size decay; their authors' results (Ivgi,
Hinder & Carmon 2023, section 4) and guarantees are for the
polynomial-decay average of the iterates (γ = 8), not the last one.
:func:`averaged` gives an optimizer that average: it keeps it in a
:class:`adaptim.PolynomialAverager` over the parameters, updated after every
step, and offers ``eval()``/``train()`` as Schedule-Free does. The trial
loop calls ``eval()`` before each evaluation, which puts the average into
the parameters, and ``train()`` after, which puts the trained point back. The
average costs one more copy of the parameters (4 bytes per float32
parameter); ``state_bytes_per_parameter`` counts it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

import adaptim
from adaptim.torch.averaging import PolynomialAverager
from adaptim.torch.mechanic import Mechanic
from adaptim.torch.twins import Muon, SparseAdam


class MuonWithAdamW(Muon):
    """:class:`adaptim.Muon` on the 2-D parameters, :class:`adaptim.AdamW` on the others.

    ``param_groups`` and ``state`` are Muon's (the matrices); ``fallback`` is the
    AdamW optimizer (``None`` when every parameter is a matrix). A problem
    without matrices (``logreg-sparse``) is stepped by AdamW alone, as Keras'
    rule would; its effective-learning-rate statistics cover the matrices only.
    With ``flavor="keras"`` (``muon@keras``) every parameter goes to
    ``adaptim.Muon(flavor="keras")``, whose own AdamW fallback is Keras'.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, **kwargs: Any) -> None:
        params = list(params)
        if kwargs.get("flavor", "torch") != "torch":  # (muon@keras: Keras' own AdamW fallback)
            super().__init__(params, lr=lr, **kwargs)
            self.fallback = None
            return
        matrices = [p for p in params if p.ndim == 2]
        others = [p for p in params if p.ndim != 2]
        # (a group, even empty: a problem without matrices is all AdamW, as in Keras)
        super().__init__([{"params": matrices}], lr=lr, **kwargs)
        self.fallback = adaptim.AdamW(others, lr=lr) if others else None

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = super().step(closure)
        if self.fallback is not None:
            for group in self.fallback.param_groups:  # a schedule sets Muon's lr: follow it
                group["lr"] = self.param_groups[0]["lr"]
            self.fallback.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        if self.fallback is not None:
            self.fallback.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        saved = super().state_dict()
        if self.fallback is not None:
            saved["fallback"] = self.fallback.state_dict()
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        fallback = state_dict.pop("fallback", None)
        super().load_state_dict(state_dict)
        if self.fallback is not None and fallback is not None:
            self.fallback.load_state_dict(fallback)


class SparseAdamOnDense(SparseAdam):
    """:class:`adaptim.SparseAdam` fed each dense gradient as a sparse one over its rows."""

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None and not p.grad.is_sparse:
                        p.grad = p.grad.to_sparse(min(p.ndim, 1))  # rows; a scalar whole
        return super().step(closure)


class MechanicAdam(Mechanic):
    """:class:`adaptim.Mechanic` over :class:`adaptim.Adam`, built from parameters.

    ``lr`` and the other arguments are Adam's (1e-3 by default, Adam's own);
    Mechanic learns the scale on top of them.
    """

    algorithm = adaptim.Adam.algorithm

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(adaptim.Adam(params, lr=lr, **kwargs))


class _Averaged:
    """Evaluated at the polynomial-decay average of the iterates (see the module docstring)."""

    #: The polynomial-decay average's γ (the authors' 8, ``PolynomialAverager``'s default).
    gamma = 8.0

    def __init__(self, params: Iterable[torch.Tensor], **kwargs: Any) -> None:
        super().__init__(params, **kwargs)  # type: ignore[call-arg]  # the optimizer's
        groups: list[dict[str, Any]] = self.param_groups  # type: ignore[attr-defined]
        self._weights = [p for group in groups for p in group["params"]]
        # A ParameterList holds the very tensors: the averager reads them after each step.
        self.averager = PolynomialAverager(nn.ParameterList(self._weights), gamma=self.gamma)
        self._trained: list[torch.Tensor] | None = None

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if self._trained is not None:
            raise RuntimeError(
                f"{type(self).__name__}.step() called in eval mode: the parameters hold the "
                "average, not the trained point; call train() first"
            )
        loss = super().step(closure)  # type: ignore[misc]
        self.averager.step()
        return loss

    @torch.no_grad()
    def eval(self) -> None:
        """Put the average into the parameters (the trained point is kept aside)."""
        if self._trained is None:
            self._trained = [p.detach().clone() for p in self._weights]
            means = self.averager.averaged_model.parameters()
            for p, mean in zip(self._weights, means, strict=True):
                p.copy_(mean)

    @torch.no_grad()
    def train(self) -> None:
        """Put the trained point back into the parameters."""
        if self._trained is not None:
            for p, kept in zip(self._weights, self._trained, strict=True):
                p.copy_(kept)
            self._trained = None


class AveragedDoG(_Averaged, adaptim.DoG):
    """:class:`adaptim.DoG`, evaluated at the polynomial-decay average (γ = 8)."""


class AveragedLDoG(_Averaged, adaptim.LDoG):
    """:class:`adaptim.LDoG`, evaluated at the polynomial-decay average (γ = 8)."""
