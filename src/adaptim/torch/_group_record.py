"""Record one pass of a rule with group-wide scalars for a partition, remembered across steps.

A pass (a :class:`~adaptim.algorithms._spec.Reduction`'s gather, or the
update) is run on the recorder's proxies (:mod:`._trace`) with the group's
scalars (``d``, ``dlr``, Schedule-Free's ``ckp1``, ...) as plain numbers, so
they become slots. Besides the array operations, a pass yields numbers the
step needs on the host: the scale of each partial sum, and number-valued
state the rule returns (Prodigy's and Adam-HD's ``step``). Those are made
slots too, so one list of slots carries everything a step reads from the
recording.

As in the engine (:mod:`._symbolic`), the first recording of a partition
runs with symbolic numbers for every hyperparameter, group scalar and
number state; later steps with the same kinds of values recompute the slots
from new values with one generated function and skip the rule altogether.
A guard the rule took (``if weight_decay != 0``, ``if lr == 0``) that fails
records again; a rule that reads a symbolic number on the host
(``float()``, ``math.sqrt``: Adam-HD's gather) is recorded every step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from adaptim.algorithms._spec import GroupScalars, Partial, Reduction
from adaptim.torch import _replay, _symbolic
from adaptim.torch._trace import Proxy, Structure, Unfusable, trace

if TYPE_CHECKING:
    from adaptim.torch._group_fast import Partition

#: The prefix of the recorded outputs that carry partial sums, not state.
SHARE = "\0share:"

#: Memos kept per partition and pass: each failed guard adds one.
MAX_MEMOS = 8


@dataclass
class Extras:
    """Where a recording put the host-side numbers among its slots."""

    #: Partial-sum key -> the slot of each part's scale.
    scales: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: Number-state key -> (its new value's slot, whether the state holds an int).
    numbers: dict[str, tuple[int, bool]] = field(default_factory=dict)


@dataclass
class Recorded:
    """One partition's recording of one pass, ready to replay."""

    partition: Partition
    structure: Structure
    slots: list[float]
    extras: Extras

    def run(self, grads: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Replay over the partition, run by run; the created lists of every run, joined."""
        structure = self.structure
        created: list[list[torch.Tensor]] = [[] for _ in structure.created]
        if not structure.ops and not structure.outputs and not structure.created:
            return created  # (a pass with nothing to do for these tensors this step)
        plan = _replay.plan_for(structure)
        part = self.partition
        for run in part.chunks:
            lists = [state[run] for state in part.state_lists]
            results = plan.run(part.flat_params[run], grads[run], *lists, self.slots)
            for joined, values in zip(created, results, strict=True):
                joined.extend(values)
        return created

    def scales(self, key: str) -> tuple[float, ...]:
        return tuple(self.slots[i] for i in self.extras.scales[key])

    def numbers(self) -> dict[str, Any]:
        """The number state the pass returned, with the state's own type."""
        return {
            key: int(self.slots[i]) if whole else self.slots[i]
            for key, (i, whole) in self.extras.numbers.items()
        }


@dataclass
class _Memo:
    memo: _symbolic.Memo
    extras: Extras


#: A pass: the update rule (``Algorithm.update``), or a reduction whose gather runs.
Pass = Callable[..., Any] | Reduction


def _recordable(
    rule: Pass, scalars: GroupScalars, number_keys: Sequence[str], extras: Extras
) -> Callable[..., Any]:
    """``rule`` in the shape the recorder runs: shares and number state become outputs and slots."""

    def update(p: Any, g: Any, state: Any, *, step: Any, xp: Any, **hp: Any) -> Any:
        if isinstance(rule, Reduction):
            new_state, sums = rule.gather(p, g, state, scalars=scalars, xp=xp, **hp)
            new_p = p
        else:
            new_p, new_state = rule(p, g, state, scalars=scalars, xp=xp, **hp)
            sums = {}
        recording = p.recording
        outputs = {}
        for key, value in new_state.items():
            if key not in number_keys:
                outputs[key] = value
                continue
            if isinstance(value, Proxy):
                raise Unfusable(f"number state {key!r} computed from arrays")
            whole = type(getattr(value, "value", value)) is int
            extras.numbers[key] = (recording._ref(value)[1], whole)
        for key, value in sums.items():
            parts = value if isinstance(value, tuple) else (value,)
            extras.scales[key] = tuple(recording._ref(part.scale)[1] for part in parts)
            for index, part in enumerate(parts):
                outputs[f"{SHARE}{key}:{index}"] = _share_node(part)
        return new_p, outputs

    return update


def _share_node(part: Partial) -> Proxy:
    """One value per tensor, in its dtype: ``a``, or ``torch.dot`` of ``a`` and ``b``."""
    a = part.a
    if not isinstance(a, Proxy):
        raise Unfusable("a partial sum that is not an array of the recording")
    value = a if part.b is None else a.recording.record("dot", a, part.b)
    if value.ref[0] == "input":  # a node, computed before any state is overwritten
        value = value * 1.0
    return value


def record(
    part: Partition,
    rule: Pass,
    pass_key: Any,
    scalars: GroupScalars,
    hp: Mapping[str, Any],
    negate: bool,
) -> Recorded:
    """This step's recording of ``rule`` for ``part``: from a memo when one applies."""
    numbers = part.numbers()
    hp_values, hp_shape = _hp_leaves(part, hp)
    scalar_values, scalar_shape = _symbolic.leaves_of(scalars)
    number_values, number_shape = _symbolic.leaves_of(numbers)
    values = [*hp_values, *scalar_values, *number_values]
    key = (pass_key, negate, hp_shape, scalar_shape, number_shape)
    memos = part.memos.setdefault(key, [])
    leaves = [0.0, *values]  # (leaf 0 is the engine's step count, unused here)
    for memo in memos:
        try:
            slots = memo.memo.slots(leaves)
        except Exception:  # e.g. a division by zero the new values reach: record instead
            slots = None
        if slots is not None:
            return Recorded(part, memo.memo.structure, slots, memo.extras)
    flat = {
        **{f"h{k}": v for k, v in hp.items()},
        **{f"s{k}": v for k, v in scalars.items()},
        **{f"n{k}": v for k, v in numbers.items()},
    }  # (walked in the order of ``values``)
    if key not in part.unmemoizable and len(memos) < MAX_MEMOS:
        context = _symbolic.Context()
        symbolic, _, _ = _symbolic.symbolic_hyperparameters(flat, context)
        extras = Extras()
        try:
            traced = _trace(part, rule, symbolic, negate, extras)
        except _symbolic.NotMemoizable:
            part.unmemoizable.add(key)
        else:
            structure = _fused(part, traced.structure)
            try:
                made = _symbolic.make_memo(
                    structure, traced.slot_expressions, context.guards, len(leaves)
                )
                if not traced.memoizable or made.slots(leaves) != traced.slots:
                    raise ValueError("the memo does not reproduce the recording")
            except Exception:  # (a constant the generated code cannot spell, such as inf)
                part.unmemoizable.add(key)
            else:
                memos.append(_Memo(made, extras))
            return Recorded(part, structure, traced.slots, extras)
    extras = Extras()
    traced = _trace(part, rule, flat, negate, extras)
    return Recorded(part, _fused(part, traced.structure), traced.slots, extras)


def _fused(part: Partition, structure: Structure) -> Structure:
    """:func:`fuse_addcdiv` where it is exact: float32 and float64 (half types compute in float)."""
    if part.members[0].p.dtype in (torch.float32, torch.float64):
        return fuse_addcdiv(structure)
    return structure


def _hp_leaves(part: Partition, hp: Mapping[str, Any]) -> tuple[list[float], tuple[Any, ...]]:
    """``leaves_of(hp)``, kept while the optimizer hands over the same dict (it reuses them)."""
    known = part.hp_leaves
    if known is not None and known[0] is hp:
        return known[1], known[2]
    values, shape = _symbolic.leaves_of(hp)
    part.hp_leaves = (hp, values, shape)
    return values, shape


def fuse_addcdiv(structure: Structure) -> Structure:
    """``p + (c·x)/y`` (three recorded operations, two temporaries) as one ``addcdiv``.

    The Adam-like updates of Prodigy, D-Adaptation and Adam-HD are written as
    ``p + (-lr·m)/denom``, the formula of ATen's ``addcdiv`` in its order of
    roundings (the scalar times ``x``, divided by ``y``, added to ``p``), so
    that the reference path equals the references' ``addcdiv_``; replayed as
    ``torch._foreach_addcdiv_`` it is the same arithmetic in one pass.
    """
    ops = list(structure.ops)
    uses: dict[Any, int] = {}
    for _, args in ops:
        for arg in args:
            uses[arg] = uses.get(arg, 0) + 1
    for _, result in (*structure.outputs, *structure.created):
        uses[result] = uses.get(result, 0) + 2  # (never fused away)
    per_tensor = structure.per_tensor_nodes()
    fused: dict[int, tuple[str, tuple[Any, ...]]] = {}
    dropped: set[int] = set()
    for index, (op, args) in enumerate(ops):
        if index in per_tensor:
            continue
        found = _addcdiv(ops, uses, op, args)
        if found is not None:
            fused[index] = found[0]
            dropped.update(found[1])
    if not fused:
        return structure
    renumber: dict[int, int] = {}
    kept: list[Any] = []
    for index, entry in enumerate(ops):
        if index in dropped:
            continue
        renumber[index] = len(kept)
        kept.append(fused.get(index, entry))

    def ref(value: Any) -> Any:
        return ("node", renumber[value[1]]) if value[0] == "node" else value

    return dataclasses.replace(
        structure,
        ops=tuple((op, tuple(map(ref, args))) for op, args in kept),
        outputs=tuple((name, ref(value)) for name, value in structure.outputs),
        created=tuple((name, ref(value)) for name, value in structure.created),
    )


def _addcdiv(
    ops: list[Any], uses: Mapping[Any, int], op: str, args: tuple[Any, ...]
) -> tuple[tuple[str, tuple[Any, ...]], tuple[int, ...]] | None:
    """``p + (c·x)/y``, ``p + x/y`` or ``p - x/y`` as an ``addcdiv`` and the operations it replaces."""
    if op == "add":
        candidates = [(args[1], args[0]), (args[0], args[1])]
    elif op == "sub":
        candidates = [(args[1], args[0])]
    else:
        return None
    for quotient, base in candidates:
        if quotient[0] != "node" or uses.get(quotient) != 1 or base[0] == "slot":
            continue
        div_op, div_args = ops[quotient[1]]
        if div_op != "div" or div_args[1][0] not in ("node", "input"):
            continue
        numerator, divisor = div_args[:2]
        if op == "sub":  # p - x/y = p + (-1·x)/y, exactly
            if numerator[0] in ("node", "input"):
                return ("addcdiv", (base, numerator, divisor, ("const", -1.0))), (quotient[1],)
            continue
        if numerator[0] == "node" and uses.get(numerator) == 1 and ops[numerator[1]][0] == "mul":
            left, right = ops[numerator[1]][1][:2]
            scalar, array = (left, right) if left[0] == "slot" else (right, left)
            if scalar[0] == "slot" and array[0] in ("node", "input"):
                fused = ("addcdiv", (base, array, divisor, scalar))
                return fused, (quotient[1], numerator[1])
        if numerator[0] in ("node", "input"):
            return ("addcdiv", (base, numerator, divisor, ("const", 1.0))), (quotient[1],)
    return None


def _trace(
    part: Partition, rule: Pass, flat: Mapping[str, Any], negate: bool, extras: Extras
) -> Any:
    hp = {k[1:]: v for k, v in flat.items() if k[0] == "h"}
    scalars = {k[1:]: v for k, v in flat.items() if k[0] == "s"}
    numbers = {k[1:]: v for k, v in flat.items() if k[0] == "n"}
    return trace(
        _recordable(rule, scalars, part.number_keys, extras),
        part.element_keys,
        part.tensor_keys,
        part.absent_keys,
        numbers,
        negate_grad=negate,
        step=0.0,
        hyperparams=hp,
        ndim=1,
    )
