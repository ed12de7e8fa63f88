"""DoG and LDoG for PyTorch, with ``dog-optimizer``'s arguments and ``state_dict`` layout.

The rules are :data:`adaptim.algorithms.DOG` and :data:`~adaptim.algorithms.LDOG`
(their docstrings are appended to the classes'). Inside, adaptim keeps
:math:`x_0` in each tensor's state and DoG's :math:`\\bar r`, :math:`G`,
:math:`\\eta` as numbers in the group, as every group-pass rule does;
``state_dict()`` writes, and ``load_state_dict()`` reads, the reference's
layout, so a checkpoint moves both ways between adaptim and ``dog-optimizer``
1.0.3.

The reference layout: ``state`` holds only ``{"_first_step": bool}``; each
param group holds ``init_buffer`` (a list, :math:`x_0` per parameter),
``rbar`` and ``G`` (0-d tensors for DoG, one entry per parameter for LDoG)
and ``eta`` (a list, one 0-d tensor per parameter). adaptim also loads its
own saves (the same layout) and checks everything before anything changes.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import torch

from adaptim import algorithms as alg
from adaptim.torch._base import NonFinitePolicy, ParamsT
from adaptim.torch._group import GroupOptimizer

#: The group keys of the reference layout that adaptim keeps elsewhere.
_REFERENCE_KEYS = ("init_buffer", "rbar", "G", "eta")
_PER_TENSOR = ("rbar", "G", "eta")


class _DistanceOverGradients(GroupOptimizer):
    def __init__(
        self,
        params: ParamsT,
        reps_rel: float = 1e-6,
        lr: float = 1.0,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        init_eta: float | None = None,
        *,
        maximize: bool = False,
        nonfinite: NonFinitePolicy = "ignore",
    ) -> None:
        if init_eta is not None:  # as the reference: the first step is init_eta, r̄₀ = 0
            reps_rel = 0.0
        defaults: dict[str, Any] = dict(
            reps_rel=reps_rel, lr=lr, weight_decay=weight_decay, eps=eps, init_eta=init_eta,
            maximize=maximize,
        )  # fmt: skip
        super().__init__(params, defaults, nonfinite=nonfinite)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Each class its own __init__ (the same code): Python's TypeError for a wrong
        # argument names the function's __qualname__, which would be this private base's.
        super().__init_subclass__(**kwargs)
        if cls.__init__ is not _DistanceOverGradients.__init__:
            return  # (an __init__ of its own or of a mixin first in its MRO: the lab's AveragedDoG)
        base = _DistanceOverGradients.__init__
        init = types.FunctionType(
            base.__code__, base.__globals__, "__init__", base.__defaults__, base.__closure__
        )
        init.__kwdefaults__ = base.__kwdefaults__
        init.__annotations__ = base.__annotations__
        init.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = init  # type: ignore[method-assign]

    @property
    def _layer_wise(self) -> bool:
        return self.algorithm is alg.LDOG

    # -- state_dict in the reference's layout ------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The state in ``dog-optimizer``'s layout (see the module docstring)."""
        saved = super().state_dict()
        state = saved["state"]
        groups, started_any = [], False
        for packed, group in zip(saved["param_groups"], self.param_groups, strict=True):
            packed = dict(packed)
            entries = [state.get(i, {}) for i in packed["params"]]
            if self._layer_wise:
                started = any("rbar" in e for e in entries)
            else:
                scalars = {k: packed.pop(k) for k in _PER_TENSOR}
                started = scalars["rbar"] is not None
            if started:
                started_any = True
                packed.update(self._reference_entries(group, entries, packed))
                if not self._layer_wise:
                    packed.update(_as_tensors(scalars, len(entries)))
            groups.append(packed)
        return {"state": {"_first_step": not started_any}, "param_groups": groups}

    def _reference_entries(
        self, group: Mapping[str, Any], entries: list[Mapping[str, Any]], hp: Mapping[str, Any]
    ) -> dict[str, Any]:
        # A tensor that has had no gradient yet starts where it is now; for LDoG
        # its r̄ and G are those of a first step with a zero gradient.
        starts = [
            e["init_buffer"] if "init_buffer" in e else p.detach().clone()
            for p, e in zip(group["params"], entries, strict=True)
        ]
        if not self._layer_wise:
            return {"init_buffer": starts}
        columns: dict[str, list[torch.Tensor]] = {k: [] for k in _PER_TENSOR}
        for p, e in zip(group["params"], entries, strict=True):
            if "rbar" in e:
                fresh = {k: e[k] for k in _PER_TENSOR}
            else:
                rbar = hp["reps_rel"] * (1 + p.detach().norm())
                fresh = {"rbar": rbar, "G": torch.full_like(rbar, hp["eps"]), "eta": rbar * 0}
            for key in _PER_TENSOR:
                columns[key].append(fresh[key])
        return {
            "init_buffer": starts,
            "rbar": torch.stack(columns["rbar"]),
            "G": torch.stack(columns["G"]),
            "eta": list(torch.stack(columns["eta"])),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``state_dict`` of ``dog-optimizer`` or of adaptim (the same layout), checked first."""
        saved_state = state_dict.get("state") if isinstance(state_dict, Mapping) else None
        if isinstance(saved_state, Mapping) and "_first_step" in saved_state:
            state_dict = self._from_reference(state_dict)
        super().load_state_dict(state_dict)

    def _from_reference(self, saved: Mapping[str, Any]) -> dict[str, Any]:
        name = f"adaptim.{type(self).__name__}"
        first = saved["state"]["_first_step"]
        state: dict[Any, dict[str, torch.Tensor]] = {}
        groups = []
        for index, packed in enumerate(saved["param_groups"]):
            group = {k: v for k, v in packed.items() if k not in _REFERENCE_KEYS}
            ids = list(group.get("params", []))
            started = not first and "init_buffer" in packed
            if started:
                missing = [k for k in _REFERENCE_KEYS if k not in packed]
                if missing or len(packed["init_buffer"]) != len(ids):
                    raise ValueError(
                        f"Invalid state_dict for {name}, param_groups[{index}]: a started group "
                        f"needs init_buffer, rbar, G and eta for each of its {len(ids)} "
                        f"parameters (missing: {', '.join(missing) or 'none'}; init_buffer has "
                        f"{len(packed['init_buffer'])} entries)."
                    )
                for position, saved_id in enumerate(ids):
                    entry = {"init_buffer": packed["init_buffer"][position].detach().clone()}
                    if self._layer_wise:
                        entry.update(
                            {k: _entry(packed[k], position).detach().clone() for k in _PER_TENSOR}
                        )
                    state[saved_id] = entry
            if not self._layer_wise:
                group.update({"rbar": None, "G": None, "eta": None})
                if started:
                    group.update(
                        rbar=float(packed["rbar"]),
                        G=float(packed["G"]),
                        eta=float(_entry(packed["eta"], 0)) if ids else None,
                    )
            groups.append(group)
        return {"state": state, "param_groups": groups}


def _entry(value: Any, position: int) -> torch.Tensor:
    """Entry ``position`` of a per-parameter list or 1-d tensor (LDoG's ``rbar``, ``G``, ``eta``)."""
    item = value[position]
    return item if isinstance(item, torch.Tensor) else torch.tensor(item)


def _as_tensors(scalars: Mapping[str, float], count: int) -> dict[str, Any]:
    """DoG's group scalars as the reference keeps them; float64, so a round trip is exact."""

    def tensor(value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.float64)

    return {
        "rbar": tensor(scalars["rbar"]),
        "G": tensor(scalars["G"]),
        "eta": [tensor(scalars["eta"]) for _ in range(count)],
    }


_COMMON = """

    Same arguments, defaults and ``state_dict`` layout as ``dog.{0}`` of
    ``dog-optimizer`` 1.0.3 (``reps_rel``, ``lr`` = the paper's :math:`c`,
    keep it at 1; ``weight_decay``; ``eps``; ``init_eta``). Besides those,
    ``maximize`` ascends and ``nonfinite`` (``"ignore"`` | ``"skip"`` |
    ``"raise"``) decides what a NaN or Inf gradient does. Evaluate an
    averaged copy of the model (:class:`adaptim.torch.PolynomialAverager`).

    The update rule
    ---------------
"""


class DoG(_DistanceOverGradients):
    __doc__ = (
        "DoG, Distance over Gradients (Ivgi, Hinder & Carmon 2023): SGD with a "
        "parameter-free step size, one per param group; ``param_groups[i]['eta']`` is "
        "the last step's." + _COMMON.format("DoG") + (alg.DOG.update.__doc__ or "")
    )
    algorithm = alg.DOG


class LDoG(_DistanceOverGradients):
    __doc__ = (
        "Layer-wise DoG (Ivgi, Hinder & Carmon 2023): DoG's step size for each tensor on "
        "its own; ``optimizer.state[p]['eta']`` is the last step's."
        + _COMMON.format("LDoG")
        + (alg.LDOG.update.__doc__ or "")
    )
    algorithm = alg.LDOG


DOG_OPTIMIZERS: dict[str, type[GroupOptimizer]] = {"dog": DoG, "ldog": LDoG}
