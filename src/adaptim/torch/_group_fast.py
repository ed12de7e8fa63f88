"""The multi-tensor path of rules with group-wide scalars (Prodigy, D-Adaptation, Schedule-Free, DoG, HD).

A step of such a rule (:class:`~adaptim.algorithms._spec.GroupPass`) is a
gather pass, a reduction to a few scalars and an element-wise update. The
reference path calls the rule once per tensor for each pass. Here each pass
is recorded once per *partition* (tensors of one param group with the same
device, dtype and state layout) by the engine's recorder
(:mod:`._trace`, with the group's scalars as slots) and replayed over all the
partition's tensors with ``torch._foreach_*`` kernels (:mod:`._replay`), in
place where liveness allows. The recording sees every tensor as its flat
(1-d) view, so state kept flat (Prodigy's ``p0`` and ``s``) and state of the
parameter's shape replay alike. Recordings are remembered across steps and
``p + (c·x)/y`` runs as one ``addcdiv`` (:mod:`._group_record`); partitions
are kept while the tensors and state stay the same objects (:class:`Layout`),
and on the CPU they are replayed in runs of whole tensors
(:data:`CHUNK_NUMEL`).

A partial sum (:class:`~adaptim.algorithms._spec.Partial`) is recorded as
one value per tensor in the tensor's dtype (``a``, or ``torch.dot(a, b)``),
by the same kernels as the reference path; the shares are lifted to
float64, scaled and added in the reference path's order, with one host
synchronisation per reduction. The float results are therefore the
reference path's, bit for bit (``tests/test_group_fast.py``).

What the recorder cannot take (a rule reading array values on the host,
Prodigy's ``slice_p > 1``, ``Algorithm.recordable=False``: LDoG), and
tensors it does not cover (sparse or complex gradients, non-contiguous
tensors, tensor subclasses), step on the reference path; ``fused_status()``
says which path each group took and why.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from adaptim.algorithms import _group as shared
from adaptim.algorithms._spec import GroupScalars, Reduction
from adaptim.torch import _replay
from adaptim.torch._group_record import SHARE, Pass, Recorded, record
from adaptim.torch._trace import Unfusable

if TYPE_CHECKING:
    from adaptim.torch._group import GroupOptimizer


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


class FastScope:
    """The :class:`~adaptim.algorithms._group.Executor` of one scope's multi-tensor step.

    Every pass records all partitions before it replays any: a rule the
    recorder refuses leaves the state untouched, and that pass and the rest
    of the step run per tensor (:class:`~adaptim.algorithms._group.PerTensor`).
    """

    def __init__(
        self,
        optimizer: GroupOptimizer,
        members: list[Member],
        hps: Sequence[Mapping[str, Any]],
        fallback: Callable[[], shared.PerTensor],
        layout: Layout | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.members = members
        self.layout = layout
        self.hps = hps
        self.fallback = fallback
        self.reference: shared.PerTensor | None = None
        self.plans: list[_replay.Plan] = []
        #: How the step ran, for ``fused_status()``: set on the first pass.
        self.status = "reference: not stepped yet"
        self._parts: list[Partition] | None = None if layout is None else layout.parts
        self._grads: list[list[torch.Tensor]] | None = None
        if layout is not None:
            self.status = _describe(layout.parts, len(layout.params))

    @property
    def parts(self) -> list[Partition]:
        """The partitions, made on first use (after the first step created the state)."""
        if self._parts is None:
            found = partitions(self.members)
            if isinstance(found, str):
                self.status = found
                self.reference = self.fallback()
                found = []
            else:
                self.status = _describe(found, len(self.members))
                self.layout = Layout.of(found, self.members)
            self._parts = found
        return self._parts

    def grads(self) -> list[list[torch.Tensor]]:
        if self._grads is None:
            self._grads = [part.grads() for part in self.parts]
        return self._grads

    def _record(self, rule: Pass, pass_key: Any, scalars: GroupScalars) -> list[Recorded] | None:
        """Every partition's recording of a pass, or ``None`` (and the per-tensor path) if refused."""
        groups = self.optimizer.param_groups
        try:
            return [
                record(
                    part,
                    rule,
                    pass_key,
                    scalars,
                    self.hps[part.group],
                    bool(groups[part.group].get("maximize", False)),
                )
                for part in self.parts
            ]
        except Unfusable as why:
            self.status = f"reference: the rule cannot be recorded ({why})"
            self.optimizer._refuse_fast(self.status)
            self.reference = self.fallback()
            return None

    def gather(self, reduction: Reduction, scalars: GroupScalars) -> dict[str, float]:
        if self.parts is not None and self.reference is not None:
            return self.reference.gather(reduction, scalars)
        index = shared.group_pass(self.optimizer.algorithm).reductions.index(reduction)
        recorded = self._record(reduction, index, scalars)
        if recorded is None:
            return self.gather(reduction, scalars)
        pieces: dict[str, list[tuple[list[int], torch.Tensor]]] = {}
        for rec, grads in zip(recorded, self.grads(), strict=True):
            outputs = self._replay(rec, grads)
            for key in rec.extras.scales:
                factors = rec.scales(key)
                columns = [outputs[f"{SHARE}{key}:{i}"] for i in range(len(factors))]
                pieces.setdefault(key, []).append(
                    (rec.partition.positions, _shares(columns, factors))
                )
        return _totals(pieces)

    def update(self, scalars: GroupScalars) -> None:
        if self.parts is not None and self.reference is not None:
            self.reference.update(scalars)
            return
        recorded = self._record(self.optimizer.algorithm.update, "update", scalars)
        if recorded is None:
            self.update(scalars)
            return
        for rec, grads in zip(recorded, self.grads(), strict=True):
            self._replay(rec, grads)

    def _replay(self, rec: Recorded, grads: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """Run one recording; store new state entries and number state; return the share lists."""
        part = rec.partition
        structure = rec.structure
        created = rec.run(grads)
        if structure.ops:
            self.plans.append(_replay.plan_for(structure))
        shares: dict[str, list[torch.Tensor]] = {}
        for (key, _), values in zip(structure.created, created, strict=True):
            if key.startswith(SHARE):
                shares[key] = values
                continue
            for member, value in zip(part.members, values, strict=True):
                member.state[key] = value.view_as(member.p)
            self.layout = None  # new state entries: partition again next step
        for key, value in rec.numbers().items():
            for member in part.members:
                if isinstance(member.state[key], torch.Tensor):
                    member.state[key].fill_(value)
                else:
                    member.state[key] = value
        return shares


def _describe(parts: list[Partition], count: int) -> str:
    n = len(parts)
    return f"foreach ({n} partition{'s' * (n > 1)}): {count} tensors"


def _shares(columns: list[list[torch.Tensor]], factors: tuple[float, ...]) -> torch.Tensor:
    """Each tensor's share in float64: ``a.to(float64) * scale``, parts added as the reference path adds them."""
    lifted = [torch.stack(c).to(torch.float64) * f for c, f in zip(columns, factors, strict=True)]
    if len(lifted) == 1:
        return lifted[0]
    return torch.stack(lifted, dim=1).sum(dim=1)


def _totals(pieces: dict[str, list[tuple[list[int], torch.Tensor]]]) -> dict[str, float]:
    """Every key's shares added in scope order (one float64 sum each), with one host sync."""
    sums = []
    for parts in pieces.values():
        positions = [i for indices, _ in parts for i in indices]
        values = torch.cat([v for _, v in parts]) if len(parts) > 1 else parts[0][1]
        if positions != sorted(positions):
            order = sorted(range(len(positions)), key=positions.__getitem__)
            values = values[torch.tensor(order, device=values.device)]
        sums.append(values.sum())
    if not sums:
        return {}
    device = sums[0].device
    totals: list[float] = torch.stack([s.to(device) for s in sums]).tolist()
    return dict(zip(pieces, totals, strict=True))
