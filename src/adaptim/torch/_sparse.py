"""The sparse-gradient path of a torch :class:`~adaptim.torch._base.Optimizer`.

An algorithm that takes sparse gradients (``Algorithm.sparse``) either
densifies them or, for rules that are element-wise, updates only the rows a
gradient touches (:meth:`SparseLayer._update_rows`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from adaptim.torch._state_dict import StateDictLayer
from adaptim.torch._torch_ops import TORCH_OPS


class SparseLayer(StateDictLayer):
    """Which sparse path a parameter takes, and the row-wise update."""

    def _sparse_mode(self, p: torch.Tensor, hp: Mapping[str, Any]) -> str:
        name = type(self).__name__
        if self.state_format is not None:
            raise RuntimeError(
                f"adaptim.{name}: {self.state_format.describe()} does not support sparse "
                "gradients; use the default state (state_dtype=None, state_bits=None)."
            )
        if self.algorithm.sparse is None:
            raise RuntimeError(
                f"adaptim.{name} does not support sparse gradients; "
                f"use {self.algorithm.sparse_alternative}, or torch.optim.SparseAdam."
            )
        if p.is_complex():
            raise RuntimeError(
                f"adaptim.{name} does not support sparse gradients of complex parameters."
            )
        return self.algorithm.sparse(hp)

    def _update_rows(
        self,
        p: torch.Tensor,
        grad: torch.Tensor,
        state: dict[str, Any],
        entries: list[str],
        step: float,
        hp: dict[str, Any],
    ) -> None:
        # The rule is element-wise, so running it on the touched rows alone is
        # the same arithmetic as the dense update, at the cost of nnz.
        grad = grad.coalesce()  # duplicate indices must be summed first
        rows = tuple(grad.indices())
        values = grad.values()
        tensors = {k: state[k] for k in entries}
        if not rows:  # no sparse axis (a 0-d gradient): one value, the whole tensor, or none
            if len(values):
                new_p, new_state = self.algorithm.update(
                    p, values[0], dict(tensors), step=step, xp=TORCH_OPS, **hp
                )
                p.copy_(new_p)
                for key, value in new_state.items():
                    tensors[key].copy_(value)
            return
        if len(rows) == 1:  # whole rows (nn.Embedding's): index_select is ~15x a gather
            (index,) = rows
            new_p, new_state = self.algorithm.update(
                p.index_select(0, index), values,
                {k: v.index_select(0, index) for k, v in tensors.items()},
                step=step, xp=TORCH_OPS, **hp,
            )  # fmt: skip
            # A state made before model.to(float64) keeps its dtype, as torch's
            # does: the rule computes in the wider one, each tensor stores its own.
            p.index_copy_(0, index, new_p.to(p.dtype))
            for key, value in new_state.items():
                tensors[key].index_copy_(0, index, value.to(tensors[key].dtype))
            return
        new_p, new_state = self.algorithm.update(
            p[rows], values, {k: v[rows] for k, v in tensors.items()}, step=step, xp=TORCH_OPS, **hp
        )
        p.index_put_(rows, new_p.to(p.dtype))
        for key, value in new_state.items():
            tensors[key].index_put_(rows, value.to(tensors[key].dtype))


def _dense_or_none(value: Any) -> Any:
    # torch's sparse-gradient SGD may leave a sparse momentum buffer in a state_dict.
    if isinstance(value, torch.Tensor) and value.is_sparse:
        return value.to_dense()
    return value
