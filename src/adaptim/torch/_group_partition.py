"""The partitions of :mod:`._group_fast`: which tensors of a scope one recording covers.

A scope's tensors (:class:`Member`) are grouped into partitions
(:class:`Partition`) by param group, device, dtype, state layout and number
state (:func:`partitions`), each seen as flat 1-d views and cut on the CPU
into runs of whole tensors (:data:`CHUNK_NUMEL`); what cannot be replayed
(subclasses, sparse or complex gradients, odd state) sends the scope to the
reference path, with the reason. :class:`Layout` keeps a scope's partitions
between steps while its tensors and state stay the same objects.

Kept apart from :mod:`._group_fast`, whose
:class:`~adaptim.torch._group_fast.FastScope` records and replays the passes
over these partitions: this module only decides the grouping and when it is
still valid.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Member:
    """One tensor of a scope: its param group, the parameter and its state."""

    group: int
    p: torch.Tensor
    state: dict[str, Any]


@dataclass
class Partition:
    """Tensors of one param group that one recording covers, as flat views."""

    group: int
    members: list[Member]
    #: Positions of the members in the scope (the reference path's summation order).
    positions: list[int]
    element_keys: tuple[str, ...]
    #: 0-d tensors (one value per tensor) and absent entries.
    tensor_keys: tuple[str, ...]
    absent_keys: tuple[str, ...]
    #: Entries held as Python numbers or CPU 0-d tensors, equal across the partition.
    number_keys: tuple[str, ...]
    flat_params: list[torch.Tensor] = field(default_factory=list)
    state_lists: list[list[torch.Tensor]] = field(default_factory=list)
    #: Runs of whole tensors replayed together (see :data:`CHUNK_NUMEL`).
    chunks: list[slice] = field(default_factory=list)
    #: Recordings later steps reuse (:mod:`._group_record`), and keys that cannot be.
    memos: dict[Any, list[Any]] = field(default_factory=dict)
    unmemoizable: set[Any] = field(default_factory=set)
    #: The last hyperparameter dict and its leaves (:func:`._group_record.record`).
    hp_leaves: tuple[Any, list[float], tuple[Any, ...]] | None = None

    def grads(self) -> list[torch.Tensor]:
        grads: list[torch.Tensor] = [m.p.grad for m in self.members]  # type: ignore[misc]
        return list(map(_flat, grads))

    def numbers(self) -> dict[str, Any]:
        state = self.members[0].state
        return {k: state[k] for k in self.number_keys}


def _flat(t: torch.Tensor) -> torch.Tensor:
    """The 1-d view the recording sees (the tensor itself when it is 1-d already)."""
    return t if t.ndim == 1 else t.view(-1)


def _layout(p: torch.Tensor, state: Mapping[str, Any]) -> tuple[tuple[str, str], ...] | None:
    """Each state entry's kind for the recording, or ``None`` when the tensor needs the reference path."""
    layout = []
    for key, value in state.items():
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            layout.append((key, "number"))
        elif not isinstance(value, torch.Tensor) or value.is_sparse or value.is_complex():
            return None
        elif value.ndim == 0 and value.device.type == "cpu" and p.device.type != "cpu":
            layout.append((key, "number"))
        elif value.ndim == 0 and value.numel() != p.numel():
            layout.append((key, "tensor"))
        elif (
            value.numel() == p.numel()
            and value.dtype == p.dtype
            and value.device == p.device
            and value.is_contiguous()
        ):
            layout.append((key, "element"))
        else:
            return None
    return tuple(layout)


def _plain(p: torch.Tensor) -> str | None:
    """Why ``p`` and its gradient cannot be replayed (``None`` when they can)."""
    grad = p.grad
    if type(p) not in (torch.Tensor, torch.nn.Parameter) or p.layout != torch.strided:
        return "a tensor subclass or non-strided parameter"
    if grad is None or grad.is_sparse or grad.layout != torch.strided:
        return "a sparse gradient"
    if p.is_complex() or not p.is_floating_point():
        return "a complex or integer parameter"
    if grad.dtype != p.dtype or not p.is_contiguous() or not grad.is_contiguous():
        return "a non-contiguous tensor or a gradient of another dtype"
    if p.numel() == 0:
        return "an empty tensor"
    return None


def partitions(members: Sequence[Member]) -> list[Partition] | str:
    """Group a scope's tensors for recording; a string says why the scope takes the reference path."""
    buckets: dict[tuple[Any, ...], Partition] = {}
    for position, member in enumerate(members):
        p = member.p
        why = _plain(p)
        layout = None if why else _layout(p, member.state)
        if why or layout is None:
            return f"reference: {why or 'a state entry of another shape, dtype or device'}"
        numbers = tuple(
            (
                k,
                member.state[k].item()
                if isinstance(member.state[k], torch.Tensor)
                else member.state[k],
            )
            for k, kind in layout
            if kind == "number"
        )
        key = (member.group, p.device, p.dtype, layout, numbers)
        part = buckets.get(key)
        if part is None:
            part = Partition(
                group=member.group,
                members=[],
                positions=[],
                element_keys=tuple(k for k, kind in layout if kind == "element"),
                tensor_keys=tuple(k for k, kind in layout if kind == "tensor"),
                absent_keys=(),
                number_keys=tuple(k for k, kind in layout if kind == "number"),
            )
            buckets[key] = part
        part.members.append(member)
        part.positions.append(position)
    for part in buckets.values():
        part.flat_params = [_flat(m.p) for m in part.members]
        part.state_lists = [
            [_flat(m.state[k]) for m in part.members] for k in part.element_keys
        ] + [[m.state[k] for m in part.members] for k in part.tensor_keys]
        part.chunks = _chunks([m.p for m in part.members])
    return list(buckets.values())


#: On the CPU a partition is replayed in runs of whole tensors of about this
#: many elements: the temporaries of a run (a few per recorded pass) stay in
#: the caches and are reused by the allocator from one run to the next, where
#: temporaries for the whole partition at once would be fresh pages from the
#: kernel on every step (glibc returns large blocks on free). Per-tensor sums
#: are unchanged, so the results are too. GPUs replay each partition at once.
CHUNK_NUMEL = 1 << 16


def _chunks(params: list[torch.Tensor]) -> list[slice]:
    if params[0].device.type != "cpu":
        return [slice(0, len(params))]
    chunks, start, size = [], 0, 0
    for index, p in enumerate(params):
        if size and size + p.numel() > CHUNK_NUMEL:
            chunks.append(slice(start, index))
            start, size = index, 0
        size += p.numel()
    chunks.append(slice(start, len(params)))
    return chunks


_GRAD = operator.attrgetter("grad")
_DTYPE = operator.attrgetter("dtype")
_IS_SPARSE = operator.attrgetter("is_sparse")


@dataclass
class Layout:
    """A scope's partitions, kept between steps while its tensors and state stay the same objects."""

    key: tuple[int, ...]
    parts: list[Partition]
    params: list[torch.Tensor]
    ptrs: list[int]
    dicts: list[dict[str, Any]]
    #: (state dict, key, tensor) of every recorded state tensor, flat.
    holders: list[dict[str, Any]]
    names: list[str]
    tensors: list[torch.Tensor]
    dtypes: list[torch.dtype]

    @classmethod
    def of(cls, parts: list[Partition], members: list[Member]) -> Layout:
        params = [m.p for m in members]
        holders, names, tensors = [], [], []
        for part in parts:
            for key in (*part.element_keys, *part.tensor_keys):
                for m in part.members:
                    holders.append(m.state)
                    names.append(key)
                    tensors.append(m.state[key])
        return cls(
            key=tuple(map(id, params)),
            parts=parts,
            params=params,
            ptrs=[p.data_ptr() for p in params],
            dicts=[m.state for m in members],
            holders=holders,
            names=names,
            tensors=tensors,
            dtypes=[p.dtype for p in params],
        )

    def current(self, params: list[torch.Tensor], state: Mapping[torch.Tensor, Any]) -> bool:
        """Whether this step's tensors, gradients and state still fit the partitions."""
        if tuple(map(id, params)) != self.key:
            return False
        grads = list(map(_GRAD, params))
        return (
            list(map(torch.Tensor.data_ptr, params)) == self.ptrs
            and all(map(operator.is_, map(state.get, params), self.dicts))
            and all(map(operator.is_, map(dict.get, self.holders, self.names), self.tensors))
            and not any(map(_IS_SPARSE, grads))
            and all(map(operator.is_, map(_DTYPE, grads), self.dtypes))
            and all(map(torch.Tensor.is_contiguous, grads))
        )
