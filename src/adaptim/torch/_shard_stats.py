"""Adafactor and SM3 on FSDP2's DTensor shards: row and column statistics over the mesh.

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

SM3 keeps one vector of its row and column maxima concatenated
(:mod:`adaptim.algorithms._axes`), which no sharded placement describes: on
DTensors it is kept whole on every rank, a ``Replicate()`` DTensor (``R + C``
numbers for an ``R × C`` matrix). ``axis_piece`` reads the part of each
axis's maxima that the local shard covers (from its offset along the axis),
and ``axis_maxima`` writes the local shard's maxima at their global places,
zeros elsewhere, and takes the maximum over the ranks (``all_reduce``, max;
every value is ``≥ 0``). Maxima do not depend on the order they are taken in,
so SM3 on shards is bit-identical to an unsharded run.
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
    """``xp`` with Adafactor's and SM3's reductions over the whole of the DTensor ``p`` (above).

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

    offset = shards.local_offset(p)
    starts = [sum(shape[:axis]) + offset[axis] for axis in range(len(shape))]

    def axis_piece(vector: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
        view = [1] * like.ndim
        view[axis] = like.shape[axis]
        return vector[starts[axis] : starts[axis] + like.shape[axis]].reshape(view)

    def axis_maxima(x: torch.Tensor) -> torch.Tensor:
        maxima = x.new_zeros(sum(shape))
        if x.numel():  # (an empty shard adds nothing)
            for axis in range(x.ndim):
                others = tuple(b for b in range(x.ndim) if b != axis)
                piece = torch.amax(x, dim=others) if others else x
                maxima[starts[axis] : starts[axis] + x.shape[axis]] = piece
        mesh = p.device_mesh  # type: ignore[attr-defined]
        for mesh_dim in every:
            torch.distributed.all_reduce(
                maxima, op=torch.distributed.ReduceOp.MAX, group=mesh.get_group(mesh_dim)
            )
        return maxima

    return dataclasses.replace(
        xp,
        mean_square=mean_square,
        mean=mean,
        rms=rms,
        axis_piece=axis_piece,
        axis_maxima=axis_maxima,
    )


def as_entry(p: torch.Tensor, value: torch.Tensor, shape: tuple[int, ...] | None) -> torch.Tensor:
    """A new entry's local ``value`` as a DTensor of the entry's global ``shape`` (above)."""
    from torch.distributed.tensor import Replicate, Shard

    if shape is None or shape == tuple(p.shape):
        return shards.like(p, value)
    placements: list[Any] = [
        placement
        if isinstance(placement, Shard) and shape[placement.dim] == p.shape[placement.dim]
        else Replicate()
        for placement in p.placements  # type: ignore[attr-defined]
    ]
    return shards.from_local(p, value, placements, shape)
