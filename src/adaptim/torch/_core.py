"""The layers of the torch :class:`~adaptim.torch._base.Optimizer`, and what they declare.

The optimizer is built in layers, one module per concern, each using only
those below it: loading and checking a ``state_dict``
(:mod:`adaptim.torch._state_dict`), the sparse-gradient path
(:mod:`adaptim.torch._sparse`), the per-tensor rule
(:mod:`adaptim.torch._per_tensor`), the step (:mod:`adaptim.torch._step`) and,
on top, :class:`~adaptim.torch._base.Optimizer` itself (construction and
param groups). :class:`Parts`, at the bottom, declares for the type checker
the attributes the optimizer sets and the few methods of the top layer that
the others call; at run time it adds nothing to ``torch.optim.Optimizer``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from adaptim.algorithms._spec import Algorithm
from adaptim.torch import _lowmem
from adaptim.torch._engine import Engine
from adaptim.torch._options import NonFinitePolicy


class Parts(torch.optim.Optimizer):
    """What every layer of :class:`~adaptim.torch._base.Optimizer` may read."""

    algorithm: ClassVar[Algorithm]
    state_format: _lowmem.StateFormat | None
    nonfinite: NonFinitePolicy
    skipped_steps: int
    _engine: Engine

    if TYPE_CHECKING:  # defined by Optimizer (_base.py)

        def group_value(self, group: Mapping[str, Any], key: str) -> Any: ...

        def _validate_group(self, group: Mapping[str, Any]) -> None: ...

        def _init_state(self, p: torch.Tensor, group: Mapping[str, Any]) -> dict[str, Any]: ...
