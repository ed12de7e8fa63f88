"""What the engine knows about its param groups between steps: partitions, checks, reports.

:class:`EngineGroups` holds, per param group, a :class:`GroupRun`: the
partitions built for it (:mod:`._partition`), the parameters the reference path
keeps, and what the last step ran. It decides when that knowledge is stale (a
new parameter list, ``load_state_dict``, ``model.to()``, replaced state, step
counts or scalar state edited in place, or gradients that cannot be read in
place) and answers ``fused_status()`` and ``plans()``.

Kept apart from :mod:`._engine`, which runs a step (records the rule, picks
the native loop, the replay or the reference path): this layer only keeps the
books, and :class:`~adaptim.torch._engine.Engine` builds on it.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from adaptim.torch import _symbolic
from adaptim.torch._partition import Partition, build_partitions

if TYPE_CHECKING:
    from adaptim.torch._base import Optimizer

_GRAD = operator.attrgetter("grad")
_DATA_PTR = torch.Tensor.data_ptr
_IS_CONTIGUOUS = torch.Tensor.is_contiguous
_IS_SPARSE = operator.attrgetter("is_sparse")
_DTYPE = operator.attrgetter("dtype")
_IS_NONE = functools.partial(operator.is_, None)


@dataclass
class GroupRun:
    """What the engine knows about one param group between steps."""

    key: tuple[int, ...] = ()
    partitions: list[Partition] = field(default_factory=list)
    #: Parameters the reference path always steps (sparse, complex, subclasses, odd layouts).
    reference: list[torch.Tensor] = field(default_factory=list)
    #: Whether the group lists a parameter more than once (then all of it runs the reference).
    duplicated: bool = False
    stale: bool = True
    #: Set when the last step took a fixed route; otherwise ``last`` describes it.
    status: str | None = "not stepped yet"
    last: tuple[list[str], int, str] = field(default_factory=lambda: ([], 0, "auto"))
    #: How many of the last step's tensors its partitions' paths stepped (the rest went
    #: to the reference path, including partitions that fell back at their step).
    stepped: int = 0
    #: Structures the tracer or a plan refused, with the reason (warned once).
    refused: str | None = None
    #: What the last step ran: replay plans and native kernels (their ``source``).
    last_plans: list[Any] = field(default_factory=list)
    #: Partitions (with this step's gradients) ``prepare_group`` chose for ``run_group``.
    ready: list[tuple[Partition, list[torch.Tensor]]] = field(default_factory=list)
    #: The step (``Engine.completed`` then) that last built or checked the partitions.
    checked: int = -1


def requested_path(group: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """The path a group's switches ask for: ``reference``, ``foreach``, ``native`` or ``auto``."""
    fused = group.get("fused", defaults.get("fused"))
    if fused:
        return "native"
    if group.get("foreach") is False:
        return "reference"
    if group.get("foreach") or fused is False:
        return "foreach"
    return "auto"


class EngineGroups:
    """The engine's books on each param group: partitions, staleness, what the last step ran."""

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self.groups: dict[int, GroupRun] = {}
        #: Recordings later steps reuse, by partition layout and hyperparameter shape.
        self.memos: dict[tuple[Any, ...], list[_symbolic.Memo]] = {}
        self.unmemoizable: set[tuple[Any, ...]] = set()
        self._leaves: dict[int, tuple[dict[str, Any], list[float], tuple[Any, ...]]] = {}
        #: The optimizer's state mapping (keys and dicts, in order) after the last whole step.
        self._snapshot: tuple[list[Any], list[Any]] | None = None
        #: This step: ``state`` maps every parameter to the dict it had after the last step.
        self.dicts_known = False
        #: Steps that ran to the end.
        self.completed = 0
        #: Whether the last step ran traced, under ``torch.compile`` (the engine not involved).
        self.traced = False
        #: The fallback reasons already warned about (each is warned once per optimizer).
        self.warned: set[str] = set()

    def invalidate(self) -> None:
        """Forget every partition (after ``load_state_dict`` or a new param group)."""
        for run in self.groups.values():
            run.stale = True

    def begin_step(self) -> None:
        """Compare the state mapping with the end of the last step, once for every partition.

        Two passes without hashing a parameter (a tensor's ``__hash__`` runs in
        Python: on 1,000 parameters that alone costs more than torch's whole
        step). Any difference (an entry replaced, deleted, added or moved,
        ``state`` itself replaced) leaves ``dicts_known`` false, and each
        partition then looks its parameters up as before.
        """
        snapshot = self._snapshot
        state = self.optimizer.state
        self.dicts_known = (
            snapshot is not None
            and len(state) == len(snapshot[0])
            and all(map(operator.is_, state, snapshot[0]))
            and all(map(operator.is_, state.values(), snapshot[1]))
        )

    def end_step(self) -> None:
        """Remember the state mapping after a step that completed (see :meth:`begin_step`)."""
        state = self.optimizer.state
        self._snapshot = (list(state), list(state.values()))
        self.dicts_known = False
        self.completed += 1

    def describe(self, index: int) -> str:
        """Which path the last step of group ``index`` took, and why (``Optimizer.fused_status``)."""
        run = self.groups.get(index)
        if run is None:
            return "not stepped yet"
        if run.status is not None:
            return run.status
        if run.refused is not None:
            return f"reference: {run.refused}"
        paths, count, mode = run.last
        counts = {p: paths.count(p) for p in dict.fromkeys(paths)}
        summary = ", ".join(f"{path} ({n} partition{'s' * (n > 1)})" for path, n in counts.items())
        status = f"{summary or 'reference'}: {run.stepped} of {count} tensors"
        refused = {p.native_refused for p in run.partitions if p.native_refused}
        if mode == "native" and refused:
            status += f" (not native: {'; '.join(sorted(refused))})"
        return status

    @staticmethod
    def _usable_grads(
        run: GroupRun,
        partition: Partition,
        group_grads: list[torch.Tensor],
        state: Mapping[torch.Tensor, Any],
        dicts_known: bool,
    ) -> list[torch.Tensor] | None:
        """The partition's gradients, or ``None`` when it must go to the reference path now.

        ``group_grads``: the gradients of the group's parameters that have one, in
        the order of the list the partitions were built from (``run.key``), read
        this step; ``partition.positions`` picks this partition's (``None``: all of them).
        """
        positions = partition.positions
        grads = group_grads if positions is None else list(map(group_grads.__getitem__, positions))
        dtype = partition.params[0].dtype
        try:
            # A missing gradient has no ``data_ptr`` (TypeError), nor has a sparse one
            # (RuntimeError: no storage). The native call reads these pointers.
            partition.grad_ptrs = list(map(_DATA_PTR, grads))
        except (TypeError, RuntimeError):
            run.stale = True
            return None
        # (dtypes are singletons.)
        if any(map(operator.is_not, map(_DTYPE, grads), itertools.repeat(dtype))):
            run.stale = True
            return None
        try:
            current = partition.state_current(state, dicts_known)
        except KeyError:  # an entry was deleted: the reference path's checks name it
            current = False
        if (
            list(map(_DATA_PTR, partition.params)) != partition.ptrs
            or not current
            or not partition.counters_hold()
        ):
            # model.to(), p.data = ..., replaced state or a step count set by hand
            # (``state["step"].fill_(0)``): rebuild, reference now
            run.stale = True
            return None
        return grads

    # -- partitions ------------------------------------------------------------------
    def _partition(
        self,
        run: GroupRun,
        group: Mapping[str, Any],
        hp: Mapping[str, Any],
        params: list[torch.Tensor],
        key: tuple[int, ...],
    ) -> None:
        run.duplicated = len(set(key)) < len(key)
        if run.duplicated:
            # A parameter listed twice (torch warns: deprecated). torch's for-loop
            # steps it once per listing, each from the last one's result: only the
            # per-tensor path does that.
            run.partitions, run.reference = [], list(params)
        else:
            run.partitions, run.reference = build_partitions(self.optimizer, group, hp, params)
            position = {id(p): i for i, p in enumerate(params)}
            for partition in run.partitions:
                positions = [position[id(p)] for p in partition.params]
                # (one partition of the whole list, in order: the usual case, no picking)
                whole = positions == list(range(len(params)))
                partition.positions = None if whole else positions
        run.key = key
        run.stale = False

    def plans(self, index: int) -> list[str]:
        """The code the last step of group ``index`` ran: replay functions and native sources."""
        run = self.groups.get(index)
        return [plan.source for plan in run.last_plans] if run else []
