"""The per-tensor rule of a torch :class:`~adaptim.torch._base.Optimizer`.

:meth:`PerTensorLayer._update` runs the algorithm's rule on one parameter: the
readable reference path of the eager step, for what the engine leaves, and
the body of the step under ``torch.compile`` (:mod:`adaptim.torch._step`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import torch

from adaptim.torch import _lowmem, _lowmem_shards, _shard_stats
from adaptim.torch._options import real_view
from adaptim.torch._sparse import SparseLayer, _dense_or_none
from adaptim.torch._state_rounding import (
    Rule,
    another_dtype_problem,
    other_dtypes,
    update_rounded,
)
from adaptim.torch._torch_ops import TORCH_OPS, TRACEABLE_OPS


class PerTensorLayer(SparseLayer):
    """The rule on one tensor, eagerly or traceable; a memory-light state decoded around it."""

    def _update(
        self,
        p: torch.Tensor,
        grad: torch.Tensor,
        group: Mapping[str, Any],
        hp: dict[str, Any],
        *,
        traceable: bool = False,
    ) -> None:
        algorithm = self.algorithm
        if group.get("maximize", False):
            grad = -grad
        state = self._init_state(p, group)
        step: float | torch.Tensor = 0.0
        if algorithm.step:
            if traceable:
                state["step"] += 1
                # Compiled: a float64 tensor, so the graph does not depend on its value
                # and scalar terms such as RAdam's rho_t keep the eager path's precision.
                step = state["step"].double()
            else:  # counted once the update has succeeded
                step = float(state["step"] + 1)
        entries = [*algorithm.state(hp), *algorithm.scalar_state]
        if self.state_format is not None:
            if grad.is_sparse:
                self._sparse_mode(p, hp)  # raises
            xp = TRACEABLE_OPS if traceable else TORCH_OPS
            decoded = self._decoded(p, state)
            position = self.state_format.position(p, self.param_groups)
            _lowmem.update_decoded(
                self.state_format,
                algorithm,
                p,
                grad,
                state,
                entries,
                decoded,
                step,
                hp,
                xp,
                position,
            )
            if algorithm.step and not traceable:
                state["step"] += 1
            return
        axis_state = algorithm.entry_shape is not None or algorithm.state_shape is not None
        if axis_state and not traceable and _lowmem_shards.is_sharded(p):
            self._update_shard(p, grad, state, entries, step, hp)
            return
        if grad.is_sparse:
            mode = self._sparse_mode(p, hp)
            if mode == "rows":
                self._update_rows(p, grad, state, entries, float(step), hp)
                if algorithm.step:
                    state["step"] += 1
                return
            grad = grad.to_dense()
        inputs = {k: _dense_or_none(state.get(k)) for k in entries}
        target, views, rule = self._rule(p, grad, inputs, step, hp, traceable)
        rounded = other_dtypes(target, views)
        new_p, new_state = update_rounded(rule, rounded) if rounded else rule()
        target.copy_(new_p)
        if algorithm.step and not traceable:
            state["step"] += 1
        for key, value in new_state.items():
            current = views[key]
            if current is None:
                stored = value.detach().clone()
                if target is not p and stored.shape == target.shape:  # a real view's
                    stored = torch.view_as_complex(stored)
                state[key] = stored
            else:
                current.copy_(value)
                state[key] = inputs[key]

    def _rule(
        self,
        p: torch.Tensor,
        grad: torch.Tensor,
        inputs: Mapping[str, torch.Tensor | None],
        step: float | torch.Tensor,
        hp: dict[str, Any],
        traceable: bool,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | None], Rule]:
        """The parameter and state as the rule reads them (real views of complex ones), and
        the rule on them, to call: it returns the new values and writes nothing."""
        algorithm = self.algorithm
        view = _as_it_is if algorithm.complex_arithmetic == "all" else real_view
        views = {k: None if v is None else view(v) for k, v in inputs.items()}
        target = view(p)
        xp = TRACEABLE_OPS if traceable else TORCH_OPS
        if p.is_complex() and algorithm.complex_arithmetic == "weight_decay":
            xp = dataclasses.replace(xp, complex_weight_decay=True)
        rule = functools.partial(
            algorithm.update, target, view(grad), views, step=step, xp=xp, **hp
        )
        return target, views, rule

    def _state_dtype_problem(self, index: int, p: torch.Tensor, hp: dict[str, Any]) -> str | None:
        """Why the rule cannot step ``p`` with its state in another dtype, or ``None``.

        State of another dtype (``model.to()`` after the state was made) steps as
        torch's in-place updates do (:mod:`._state_rounding`), but a rule that calls
        ``lerp`` (Adam and most of its family) cannot take it, in torch.optim as here.
        Found only as the rule ran, part-way through a step, that left the groups
        before it stepped; so the rule runs here, before anything changes (it
        returns new values and writes nothing), once per group, parameter dtype
        and state dtypes: a rule that takes them once takes them always.
        """
        state = self.state.get(p)
        grad = p.grad
        if not state or grad is None or grad.is_sparse or self.state_format is not None:
            return None
        algorithm = self.algorithm
        entries = [*algorithm.state(hp), *algorithm.scalar_state]
        inputs = {k: _dense_or_none(state.get(k)) for k in entries}
        if any(v is not None and type(v) is not torch.Tensor for v in inputs.values()):
            return None  # (a DTensor's state: the shard path)
        views = {k: v for k, v in inputs.items() if v is not None}
        rounded = other_dtypes(p, views)
        taken: set[Any] = self.__dict__.setdefault("_state_dtypes_taken", set())
        key = (index, p.dtype, tuple(sorted((k, str(d)) for k, d in rounded.items())))
        if not rounded or key in taken:
            return None
        step = float(state["step"] + 1) if algorithm.step and "step" in state else 0.0
        if self.param_groups[index].get("maximize", False):
            grad = -grad
        target, viewed, rule = self._rule(p, grad, inputs, step, hp, traceable=False)
        try:
            update_rounded(rule, other_dtypes(target, viewed))
        except (RuntimeError, TypeError) as error:
            return another_dtype_problem(rounded, p.dtype, f"as torch.optim cannot: {error}")
        taken.add(key)
        return None

    def _update_shard(
        self,
        p: torch.Tensor,
        grad: torch.Tensor,
        state: dict[str, Any],
        entries: list[str],
        step: float | torch.Tensor,
        hp: dict[str, Any],
    ) -> None:
        """Adafactor or SM3 on a DTensor: the rule on the local shard, its statistics taken
        over the mesh, new entries kept as DTensors of their unsharded shape (:mod:`._shard_stats`)."""
        algorithm = self.algorithm
        local = _lowmem_shards.local
        target = local(p)
        inputs = {k: None if state.get(k) is None else local(state[k]) for k in entries}
        xp = _shard_stats.sharded_ops(p, TORCH_OPS)
        new_p, new_state = algorithm.update(target, local(grad), inputs, step=step, xp=xp, **hp)
        target.copy_(new_p)
        if algorithm.step:
            state["step"] += 1
        for key, value in new_state.items():
            current = inputs[key]
            if current is None:
                assert algorithm.entry_shape is not None  # (SM3 creates its entries up front)
                shape = algorithm.entry_shape(key, tuple(p.shape))
                state[key] = _shard_stats.as_entry(p, value.detach().clone(), shape)
            else:
                current.copy_(value)

    def _decoded(self, p: torch.Tensor, state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The encoded element-wise entries of ``state``, decoded to the working dtype."""
        fmt = self.state_format
        assert fmt is not None
        decoded = {k: fmt.read(state, k, p) for k in self._elementwise_keys(state)}
        return {k: v for k, v in decoded.items() if v is not None}


def _as_it_is(tensor: torch.Tensor) -> torch.Tensor:
    """A complex tensor for a rule in complex arithmetic (``Algorithm.complex_arithmetic``)."""
    return tensor
