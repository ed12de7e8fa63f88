"""The layers of the NumPy :class:`~adaptim.numpy.Optimizer`, and what they declare.

As in the torch front-end (:mod:`adaptim.torch._core`), the optimizer is built
in layers, each using only those below it: loading and checking a
``state_dict`` (:mod:`adaptim.numpy._state_dict`), the step
(:mod:`adaptim.numpy._step`) and, on top, :class:`~adaptim.numpy.Optimizer`
itself (construction, param groups, the first state layout). :class:`Parts`,
at the bottom, declares for the type checker the attributes the optimizer sets
and the few methods of the top layer that the others call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from adaptim.algorithms import Algorithm
from adaptim.numpy import _lowmem


class Parts:
    """What every layer of :class:`~adaptim.numpy.Optimizer` may read."""

    algorithm: ClassVar[Algorithm]
    state_format: _lowmem.StateFormat | None
    defaults: dict[str, Any]
    param_groups: list[dict[str, Any]]
    state: dict[int, dict[str, Any]]
    nonfinite: str
    skipped_steps: int

    if TYPE_CHECKING:  # defined by Optimizer (_base.py)

        @property
        def params(self) -> list[np.ndarray]: ...

        def _validate(self, group: Mapping[str, Any]) -> None: ...

        def _init_state(
            self, index: int, p: np.ndarray, group: Mapping[str, Any]
        ) -> dict[str, Any]: ...
