"""Adafactor on FSDP2's DTensor shards: row and column statistics summed over the mesh.

Adafactor's rule (:mod:`adaptim.algorithms.adafactor`) is element-wise but
for three reductions, which it asks of its array backend: ``mean_square(g,
axis)`` (the row and column means of ``g²``), ``mean(R, axis)`` (the mean of
the row statistics) and ``rms(x, scale)`` (the RMS of the parameter and of
the update). A rank holds only its local shard (``DTensor.to_local()``), so
:func:`sharded_ops` gives the rule a backend whose reductions over an axis
that a mesh dimension shards (``Shard(axis)``) add up the local sums of every
rank of that mesh dimension (``all_reduce``, sum) before dividing by the
global count; reductions over unsharded axes stay local, and ``Replicate()``
dimensions need nothing, as every replica holds the same values.

The statistics then equal an unsharded run's up to the order of the sums
(float32 rounding, not bit-identical). Each rank keeps its entries as
DTensors of the shape an unsharded run has (:func:`as_entry`): an axis the
entry keeps whole is sharded as the parameter's (``row_var`` of a
``Shard(0)`` matrix: ``Shard(0)``), an axis it has reduced to 1 is
replicated (``col_var``: all ranks summed the same rows), so DCP and full
state dicts hold what an unsharded Adafactor holds.

SM3 is not covered: its state is one vector of row and column maxima
concatenated, which no DTensor placement describes (a ``max`` all-reduce
would do for the statistics; the state layout is what is missing).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from adaptim.algorithms._spec import ArrayOps
from adaptim.torch import _lowmem_shards as shards


def _sharding(p: torch.Tensor) -> dict[int, list[int]]:
    """For each axis of ``p`` that is sharded, the mesh dimensions that shard it."""
    from torch.distributed.tensor import Shard

    axes: dict[int, list[int]] = {}
    for mesh_dim, placement in enumerate(p.placements):  # type: ignore[attr-defined]
        if isinstance(placement, Shard):
            axes.setdefault(placement.dim, []).append(mesh_dim)
    return axes


def _summed(p: torch.Tensor, total: torch.Tensor, mesh_dims: list[int]) -> torch.Tensor:
    """``total`` (a local sum) summed over the ranks of ``mesh_dims``, in place."""
    mesh = p.device_mesh  # type: ignore[attr-defined]
    for mesh_dim in mesh_dims:
        torch.distributed.all_reduce(total, group=mesh.get_group(mesh_dim))
    return total


def sharded_ops(p: torch.Tensor, xp: ArrayOps) -> ArrayOps:
    """``xp`` with Adafactor's reductions taken over the whole of the DTensor ``p`` (above).

    The arrays reduced are the local shards of tensors laid out as ``p`` along
    the axis reduced (the gradient, the parameter, the update, ``row_var``).
    """
    axes = _sharding(p)
    every = sorted({d for dims in axes.values() for d in dims})
    shape = tuple(p.shape)

    def mean_square(x: torch.Tensor, axis: int) -> torch.Tensor:
        axis %= x.ndim
        total = torch.linalg.vector_norm(x, dim=axis, keepdim=True).square_()
        return _summed(p, total, axes.get(axis, [])).div_(shape[axis])

    def mean(x: torch.Tensor, axis: int) -> torch.Tensor:
        axis %= x.ndim
        total = x.sum(dim=axis, keepdim=True)
        return _summed(p, total, axes.get(axis, [])).div_(shape[axis])

    def rms(x: torch.Tensor, scale: float) -> float:
        square = torch.linalg.vector_norm(x).double().square().reshape(1)
        norm = math.sqrt(float(_summed(p, square, every)))
        return norm / (math.sqrt(float(math.prod(shape))) * scale)

    return dataclasses.replace(xp, mean_square=mean_square, mean=mean, rms=rms)


def as_entry(p: torch.Tensor, value: torch.Tensor, shape: tuple[int, ...] | None) -> torch.Tensor:
    """A new entry's local ``value`` as a DTensor of the entry's global ``shape`` (above)."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if shape is None or shape == tuple(p.shape):
        return shards.like(p, value)
    placements: list[Any] = [
        placement
        if isinstance(placement, Shard) and shape[placement.dim] == p.shape[placement.dim]
        else Replicate()
        for placement in p.placements  # type: ignore[attr-defined]
    ]
    return DTensor.from_local(
        value,
        p.device_mesh,  # type: ignore[attr-defined]
        placements,
        run_check=False,
        shape=torch.Size(shape),
        stride=torch.empty(shape, device="meta").stride(),
    )
