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

How a scope is cut into partitions, and when they are still valid, is
:mod:`._group_partition`; this module records and replays the passes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from adaptim.algorithms import _group as shared
from adaptim.algorithms._spec import GroupScalars, Reduction
from adaptim.torch import _replay
from adaptim.torch._group_partition import CHUNK_NUMEL as CHUNK_NUMEL
from adaptim.torch._group_partition import Layout as Layout
from adaptim.torch._group_partition import Member as Member
from adaptim.torch._group_partition import Partition as Partition
from adaptim.torch._group_partition import _chunks as _chunks
from adaptim.torch._group_partition import partitions as partitions
from adaptim.torch._group_record import SHARE, Pass, Recorded, record
from adaptim.torch._trace import Unfusable

if TYPE_CHECKING:
    from adaptim.torch._group import GroupOptimizer


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
