"""The step of a rule with group-wide scalars (:class:`~adaptim.algorithms._spec.GroupPass`), once for both front-ends.

A front-end hands over its param groups, the tensors that have gradients
and a :class:`Backend` (how to allocate, write in place and sum partials on
its arrays); :func:`step_scope` runs prepare, gather, combine and the
element-wise update, and writes the kept scalars back into the groups.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from adaptim.algorithms._spec import (
    Algorithm,
    Array,
    ArrayOps,
    GroupPass,
    GroupScalars,
    HParams,
    PartialSum,
    Reduction,
)


@dataclass(frozen=True)
class Backend:
    """What the shared step needs from a front-end's arrays."""

    xp: ArrayOps
    zeros_like: Callable[[Array], Array]
    copy: Callable[[Array], Array]
    #: Write ``value`` into the caller's array in place.
    assign: Callable[[Array, Array], None]
    #: The array to keep in the state for a value a rule computed (NumPy
    #: turns 0-d results into scalars, which cannot be written in place).
    own: Callable[[Any], Array]
    #: One tensor's share of a sum as a float64 0-d array, evaluated at once
    #: (before the state it may read is overwritten), without a host sync.
    share: Callable[[PartialSum], Array]
    #: Sum each list of shares; one host synchronisation for all.
    totals: Callable[[list[list[Array]]], list[float]]


@dataclass
class Work:
    """One tensor of this step: the parameter (real view), its gradient, its state and its group's hyperparameters."""

    p: Array
    grad: Array
    state: MutableMapping[str, Any]
    hp: HParams


def group_pass(algorithm: Algorithm) -> GroupPass:
    assert algorithm.group_pass is not None, f"{algorithm.name} has no group pass"
    return algorithm.group_pass


def scopes(algorithm: Algorithm, count: int) -> list[list[int]]:
    """The param-group indices that share one set of scalars."""
    if group_pass(algorithm).scope == "optimizer":
        return [list(range(count))] if count else []
    return [[index] for index in range(count)]


def kept_scalars(algorithm: Algorithm, group: Mapping[str, Any], hp: HParams) -> dict[str, Any]:
    """The scalars a group keeps between steps, as stored in it."""
    return {k: group.get(k, v) for k, v in group_pass(algorithm).scalars(hp).items()}


def init_state(
    algorithm: Algorithm, p: Array, state: MutableMapping[str, Any], hp: HParams, backend: Backend
) -> None:
    """Fill ``state`` for a tensor's first step (nothing if it has state already)."""
    if not state:
        fresh = group_pass(algorithm).init(p, hp, zeros_like=backend.zeros_like, copy=backend.copy)
        state.update({k: v if isinstance(v, int) else backend.own(v) for k, v in fresh.items()})


def _store(state: MutableMapping[str, Any], new: Mapping[str, Any], backend: Backend) -> None:
    for key, value in new.items():
        current = state.get(key)
        shape = getattr(current, "shape", None)
        if shape is not None and shape == getattr(value, "shape", None):
            backend.assign(current, value)
        else:
            state[key] = value if isinstance(value, int) else backend.own(value)


class Executor(Protocol):
    """How the tensors of one scope run the passes of a step (see :func:`step_scope`)."""

    def gather(self, reduction: Reduction, scalars: GroupScalars) -> dict[str, float]:
        """Run ``reduction.gather`` on every tensor, store its state, return the summed partials."""
        ...

    def update(self, scalars: GroupScalars) -> None:
        """Run ``Algorithm.update`` on every tensor and store the results."""
        ...


@dataclass
class PerTensor:
    """The reference execution: each pass calls the rule once per tensor."""

    algorithm: Algorithm
    work: list[Work]
    backend: Backend

    def gather(self, reduction: Reduction, scalars: GroupScalars) -> dict[str, float]:
        partials: dict[str, list[Array]] = {}
        for item in self.work:
            new_state, sums = reduction.gather(
                item.p, item.grad, item.state, scalars=scalars, xp=self.backend.xp, **item.hp
            )
            for key, value in sums.items():
                partials.setdefault(key, []).append(self.backend.share(value))
            _store(item.state, new_state, self.backend)
        return dict(zip(partials, self.backend.totals(list(partials.values())), strict=True))

    def update(self, scalars: GroupScalars) -> None:
        for item in self.work:
            new_p, new_state = self.algorithm.update(
                item.p, item.grad, item.state, scalars=scalars, xp=self.backend.xp, **item.hp
            )
            self.backend.assign(item.p, new_p)
            _store(item.state, new_state, self.backend)


def step_scope(
    algorithm: Algorithm,
    groups: Sequence[MutableMapping[str, Any]],
    hps: list[HParams],
    work: list[Work],
    backend: Backend,
    executor: Executor | None = None,
) -> None:
    """One step of the tensors in ``work`` (from ``groups``, which share scalars).

    ``executor`` runs the passes over the tensors (a front-end's multi-tensor
    path); by default :class:`PerTensor`. The scalar bookkeeping (``prepare``,
    ``combine``, what the groups keep) is the same for every executor.
    """
    rule = group_pass(algorithm)
    kept = rule.scalars(hps[0])
    # A group loaded from the reference before its first step may lack
    # scalars the reference adds later (D-Adapt SGD's g0_norm): start values.
    scalars = rule.prepare(
        {k: groups[0].get(k, v) for k, v in kept.items()}, hps
    )  # may refuse: nothing changed yet
    for item in work:
        init_state(algorithm, item.p, item.state, item.hp, backend)
    run = executor if executor is not None else PerTensor(algorithm, work, backend)
    for reduction in rule.reductions:
        combined = reduction.combine(scalars, run.gather(reduction, scalars), hps)
        if combined is None:
            return
        scalars = combined
    run.update(scalars)
    for group in groups:
        group.update({k: scalars[k] for k in kept})


def new_group_scalars(
    algorithm: Algorithm, hp: HParams, earlier: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The group-wide scalars a param group added after construction starts from.

    A group added to a Schedule-Free optimizer in train mode joins in train
    mode: its parameters have no state yet (x = y = z), so no switch is due,
    and starting in eval mode would make the next ``step()`` refuse.
    (schedulefree 1.4.1 checks group 0 only, so it steps such a group, but its
    ``eval()`` then skips it; ``train()``/``eval()`` here switch it too.)
    """
    scalars = group_pass(algorithm).scalars(hp)
    if "train_mode" in scalars and earlier:
        scalars["train_mode"] = all(group["train_mode"] for group in earlier)
    return scalars


def eval_mode_error(owner: str, index: int) -> RuntimeError:
    return RuntimeError(
        f"{owner}.step() called in eval mode (param_groups[{index}]['train_mode'] is False): "
        "the parameters hold the averaged point x, not the training point y. Call "
        "optimizer.train() before training steps (and at the start) and optimizer.eval() "
        "before evaluating or saving the model."
    )


def state_entry_problem(algorithm: Algorithm, hp: HParams, entries: Any) -> str | None:
    """Why ``entries`` cannot be one tensor's state for a group-pass rule (``None`` when it can)."""
    if not isinstance(entries, Mapping):
        return "expected a mapping of state entries"
    known = list(algorithm.state(hp))
    for key, value in entries.items():
        if key not in known:
            return f"unexpected entry {key!r} (this optimizer keeps {', '.join(map(repr, known))})"
        dtype = getattr(value, "dtype", None)
        kind = getattr(dtype, "kind", None)  # numpy
        floating = getattr(dtype, "is_floating_point", None)  # torch
        if dtype is not None and not (kind == "f" or floating is True):
            return f"{key!r} has dtype {dtype}; expected a real floating array"
    return None
