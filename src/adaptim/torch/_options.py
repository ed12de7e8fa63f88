"""Small helpers of the torch :class:`~adaptim.torch._base.Optimizer`: its option types and group values.

The ``nonfinite`` policies, the group keys torch keeps for its own switches,
how a group value reaches the rule (:func:`hyperparameter`), the
adaptim-only options a torch-flavored group leaves implicit
(:func:`implicit_options`), and the dtype and view that state follows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch

from adaptim.algorithms._validation import as_float

if TYPE_CHECKING:
    from adaptim.torch._core import Parts

NonFinitePolicy = Literal["ignore", "skip", "raise"]
NONFINITE_POLICIES: tuple[str, ...] = ("ignore", "skip", "raise")

# Group keys torch keeps for its own implementation switches. adaptim accepts
# them for drop-in compatibility; the two that change semantics are refused.
_TORCH_SWITCHES = ("foreach", "fused", "capturable", "differentiable")
_GROUP_SWITCHES = frozenset({*_TORCH_SWITCHES, "maximize", "flavor", "params"})

#: Per optimizer class, the hyperparameter names of other algorithms that it
#: does not take: a param group holding one comes from another optimizer.
_FOREIGN_KEYS: dict[type, frozenset[str]] = {}

ParamsT = Iterable[torch.Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, torch.Tensor]]


def scalar_dtype() -> torch.dtype:
    """The dtype torch.optim keeps ``step`` and other scalar state in."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def hyperparameter(name: str, value: Any) -> Any:
    """A group value as the update rule wants it: tensors become Python numbers."""
    if isinstance(value, torch.Tensor):
        return as_float(name, value)
    if isinstance(value, tuple | list) and any(isinstance(v, torch.Tensor) for v in value):
        return tuple(as_float(name, v) for v in value)
    return value


_IMPLICIT: dict[str, dict[str, Any]] = {}


def implicit_options(cls: type[Parts]) -> dict[str, Any]:
    """adaptim-only group keys, each with the value that means torch's behaviour.

    A torch-flavored param group holds such a key only when it differs from
    that value (other flavors keep every option visible), so a default adaptim optimizer's
    ``param_groups`` and ``state_dict()`` have exactly torch.optim's keys:
    distributed checkpoints (DCP, flattened or not) move both ways. Reading a
    group goes through :meth:`Optimizer.group_value`, which fills them in.
    """
    key = f"{cls.__module__}.{cls.__qualname__}.{cls.algorithm.name}"
    found = _IMPLICIT.get(key)
    if found is None:
        algorithm = cls.algorithm
        twin = getattr(torch.optim, algorithm.class_name, None) if algorithm.class_name else None
        found = {}
        if isinstance(twin, type):
            # the keys torch's groups hold (a probe of the rank the twin takes: Muon's 2-D)
            probe = twin([torch.zeros((1,) * (algorithm.param_ndim or 1), requires_grad=True)])
            torch_keys = set(probe.param_groups[0]) - {"params"}
            torch_values = {**algorithm.defaults, "flavor": "torch", "fused": None}
            found = {k: v for k, v in torch_values.items() if k not in torch_keys}
        _IMPLICIT[key] = found
    return found


def _is_implicit(implicit: Mapping[str, Any], key: str, value: Any) -> bool:
    if key not in implicit or isinstance(value, torch.Tensor):
        return False
    expected = implicit[key]
    return value is expected or (type(value) is type(expected) and value == expected)


def _holds_tensor(value: Any) -> bool:
    """Whether a group value may change without being replaced (a tensor, a list)."""
    if isinstance(value, tuple):
        return any(map(_holds_tensor, value))
    return isinstance(value, torch.Tensor | list)


def real_view(tensor: torch.Tensor) -> torch.Tensor:
    """A complex tensor as the pair of reals torch.optim updates (see ``Algorithm.complex_arithmetic``)."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor
