"""Memory-light states of DTensor parameters (FSDP2's shards): what :mod:`._lowmem` needs to know.

A parameter that FSDP2 (``fully_shard``) or a device mesh shards is a
``DTensor``: each rank holds a *local shard*, the block of the global tensor
that the placements (``Shard(d)`` or ``Replicate()`` per mesh dimension) give
its mesh coordinate. The rule is element-wise, so each rank runs it on its
local shard alone (``DTensor.to_local()``), with no communication, and stores
the state beside it:

* a bfloat16 or float32 entry, and 8-bit codes, as a DTensor with the
  parameter's mesh and placements: a sharded ``state_dict`` then holds each
  rank's shard, and a full one (``get_optimizer_state_dict(...,
  full_state_dict=True)``) the whole tensor, exactly as for torch.optim's states.
* 8-bit block maxima (:data:`._lowmem.ABSMAX_SUFFIX`): blocks of 256 start
  at the *local shard's* first element, so each rank has its own blocks. They
  are stored as a DTensor of shape ``(n_1, ..., n_k, B)``: one row of ``B``
  maxima per shard, where ``n_j`` is the size of the ``j``-th mesh dimension
  that shards the parameter (``Shard(j-1)`` on it, ``Replicate()`` on the
  others) and ``B`` the block count of the largest shard (smaller shards pad
  their row with zeros). The shapes agree on every rank, so DCP saves and
  loads them like any sharded tensor.

**Rounding bits.** Element ``i`` of the *global* tensor (its index in the
flattened parameter) draws the same stochastic-rounding bits whichever rank
holds it (:func:`global_indices`): a sharded bf16 run stores the very bits of
an unsharded one, and ranks that hold the same element (``Replicate()``, as in
HSDP) round it alike, so replicas never drift apart.

**8-bit blocks.** A block starts at each local shard's first element, so the
codes and maxima depend on the sharding: where a shard's size is not a
multiple of 256, blocks straddle other elements than in an unsharded run, and
the two agree only within the quantisation error. An 8-bit ``state_dict``
of a sharded run loads into the same sharding (same mesh and world size).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from adaptim.algorithms._state_codes import BLOCK


def _dtensor_type() -> type[torch.Tensor] | None:
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a DTensor (a shard, or a replica, of a distributed tensor)."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(tensor, dtensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (its own storage, written in place), or ``tensor`` itself."""
    if is_sharded(tensor):
        return tensor.to_local()  # type: ignore[attr-defined, no-any-return]
    return tensor


def _local_box(p: torch.Tensor) -> tuple[list[int], list[int]] | None:
    """The local shard's ``(shape, offset)`` in the global tensor, as the placements give it.

    Applies each mesh dimension's ``Shard(d)`` in order, as ``torch.chunk``
    does (chunks of ``ceil(n / size)``, the last ones smaller or empty).
    ``None`` for placements other than ``Shard`` and ``Replicate``.
    """
    from torch.distributed.tensor import Replicate, Shard

    shape, offset = list(p.shape), [0] * p.ndim
    mesh = p.device_mesh  # type: ignore[attr-defined]
    coordinate = mesh.get_coordinate()
    if coordinate is None:
        return None
    for mesh_dim, placement in enumerate(p.placements):  # type: ignore[attr-defined]
        if type(placement) is Replicate:
            continue
        if type(placement) is not Shard:
            return None
        dim = placement.dim
        chunk = -(-shape[dim] // mesh.size(mesh_dim)) if shape[dim] else 0
        start = min(coordinate[mesh_dim] * chunk, shape[dim])
        offset[dim] += start
        shape[dim] = min(start + chunk, shape[dim]) - start
    return shape, offset


def local_offset(p: torch.Tensor) -> list[int]:
    """Where the DTensor ``p``'s local shard starts along each axis of the global tensor."""
    box = _local_box(p)
    assert box is not None  # (refused before the first step otherwise)
    return box[1]


def replicated(p: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (the same on every rank) as a DTensor replicated over ``p``'s mesh; plain if ``p`` is."""
    if not is_sharded(p):
        return value
    from torch.distributed.tensor import DTensor, Replicate

    mesh = p.device_mesh  # type: ignore[attr-defined]
    return DTensor.from_local(value, mesh, [Replicate()] * mesh.ndim, run_check=False)


def refusal(p: torch.Tensor) -> str | None:
    """Why a memory-light state cannot be kept for the DTensor ``p`` (``None``: it can)."""
    box = _local_box(p)
    if box is None:
        return (
            f"its placements {tuple(p.placements)} are not Shard(d) and Replicate() "  # type: ignore[attr-defined]
            "only, or this rank is not in its mesh"
        )
    if list(local(p).shape) != box[0]:
        return (
            f"its local shard has shape {tuple(local(p).shape)}, not the {tuple(box[0])} "
            "that torch.chunk gives its placements"
        )
    return None


def global_indices(p: torch.Tensor) -> torch.Tensor | None:
    """The flat global index of each element of ``p``'s local shard (int64), or ``None`` for a plain tensor."""
    if not is_sharded(p):
        return None
    box = _local_box(p)
    assert box is not None  # (refused before the first step otherwise)
    shape, offset = box
    device = local(p).device
    strides = [math.prod(p.shape[d + 1 :]) for d in range(p.ndim)]
    index = torch.zeros(shape, dtype=torch.int64, device=device)
    for d, (size, start, stride) in enumerate(zip(shape, offset, strides, strict=True)):
        along = torch.arange(start, start + size, dtype=torch.int64, device=device) * stride
        index += along.view([size if e == d else 1 for e in range(p.ndim)])
    return index.view(-1)


def from_local(
    p: torch.Tensor, value: torch.Tensor, placements: Any, shape: tuple[int, ...]
) -> torch.Tensor:
    """The local ``value`` as a contiguous DTensor of global ``shape`` on ``p``'s mesh (no check)."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        value,
        p.device_mesh,  # type: ignore[attr-defined]
        placements,
        run_check=False,
        shape=torch.Size(shape),
        stride=torch.empty(shape, device="meta").stride(),
    )


def like(p: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (of the local shard's shape) as a DTensor laid out as ``p``; ``value`` if ``p`` is plain."""
    if not is_sharded(p):
        return value
    return from_local(p, value, p.placements, tuple(p.shape))  # type: ignore[attr-defined]


def _absmax_layout(p: torch.Tensor) -> tuple[tuple[int, ...], list[Any]]:
    """The global shape and placements of the block maxima of ``p``'s 8-bit entries (see above)."""
    from torch.distributed.tensor import Replicate, Shard

    mesh = p.device_mesh  # type: ignore[attr-defined]
    rows: list[int] = []
    placements: list[Any] = []
    largest = list(p.shape)  # the first shard along each sharding is the largest
    for mesh_dim, placement in enumerate(p.placements):  # type: ignore[attr-defined]
        if isinstance(placement, Shard):
            placements.append(Shard(len(rows)))
            rows.append(mesh.size(mesh_dim))
            largest[placement.dim] = -(-largest[placement.dim] // mesh.size(mesh_dim))
        else:
            placements.append(Replicate())
    return (*rows, -(-math.prod(largest) // BLOCK)), placements


def absmax_shape(codes: torch.Tensor) -> tuple[int, ...]:
    """The shape the block maxima of 8-bit ``codes`` must have: ``(blocks,)``, or sharded (above)."""
    if is_sharded(codes):
        return _absmax_layout(codes)[0]
    return (-(codes.numel() // -BLOCK),)


def wrap_absmax(p: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """The local shard's block maxima as the DTensor :func:`absmax_shape` describes (plain: as they are)."""
    if not is_sharded(p):
        return absmax
    shape, placements = _absmax_layout(p)
    row = absmax.new_zeros((1,) * (len(shape) - 1) + (shape[-1],))
    row.view(-1)[: absmax.numel()] = absmax
    return from_local(p, row, placements, shape)


def local_absmax(absmax: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The block maxima of the local ``codes`` (a sharded row cut to its own blocks)."""
    if not is_sharded(absmax):
        return absmax
    return local(absmax).reshape(-1)[: -(codes.numel() // -BLOCK)]
