"""The recording side of :mod:`._trace`: proxies that stand for arrays, and the ``xp`` they meet.

A rule runs unchanged on :class:`Proxy` objects; each array operation it
performs (an operator, or a function of :data:`RECORDING_OPS`) appends one
node to a :class:`Recording`, and each Python number that meets an array
becomes a slot. What a proxy cannot stand for (a branch on its values, a host
read, an unknown attribute) raises :class:`Unfusable`.

Kept apart from :mod:`._trace`, which turns a finished recording into the
:class:`~adaptim.torch._trace.Structure` plans are cached by and checks what a
plan can replay: this module knows nothing of plans, only how to record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from adaptim.algorithms._spec import ArrayOps, addcdiv
from adaptim.torch._symbolic import Sym, host_scalar


class Unfusable(Exception):
    """The rule did something a multi-tensor plan cannot express; the reference path steps it."""


# An argument of a recorded operation: ("input", i), ("node", i), ("slot", i) or ("const", value).
Ref = tuple[str, Any]
Op = tuple[str, tuple[Ref, ...]]


@dataclass
class Recording:
    """The operations a rule performed on its array inputs, in order."""

    inputs: tuple[str, ...]
    #: What ``p.ndim`` answers (LARS/LAMB exclude biases by it); a plan holds one kind.
    ndim: int
    ops: list[Op] = field(default_factory=list)
    slots: list[float] = field(default_factory=list)
    #: How each slot was computed (:mod:`._symbolic`): a leaf expression, or a constant.
    slot_expressions: list[tuple[Any, ...]] = field(default_factory=list)
    #: False once a slot came from something a memo cannot recompute (a state tensor).
    memoizable: bool = True

    def input(self, position: int) -> Proxy:
        return Proxy(self, ("input", position))

    def record(self, name: str, *args: Any) -> Proxy:
        refs = tuple(map(self._ref, args))
        self.ops.append((name, refs))
        return Proxy(self, ("node", len(self.ops) - 1))

    def _ref(self, value: Any) -> Ref:
        kind = type(value)
        if kind is Proxy:  # the common cases first: this runs for every operand of every step
            if value.recording is not self:
                raise Unfusable("an array from another recording")
            ref: Ref = value.ref
            return ref
        if kind is float or kind is int:
            self.slots.append(float(value))
            self.slot_expressions.append(("const", float(value)))
            return ("slot", len(self.slots) - 1)
        if kind is Sym:
            self.slots.append(float(value.value))
            self.slot_expressions.append(value.expression)
            return ("slot", len(self.slots) - 1)
        if kind is tuple and len(value) == 2 and value[0] == "const":
            return value  # type: ignore[no-any-return]  # an exponent, baked into the plan
        if isinstance(value, Proxy):
            return self._ref(Proxy(value.recording, value.ref))
        if isinstance(value, bool):
            raise Unfusable("a bool where a number was expected")
        if isinstance(value, int | float):  # NumPy scalars and other number types
            self.slots.append(float(value))
            self.slot_expressions.append(("const", float(value)))
            return ("slot", len(self.slots) - 1)
        if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_complex():
            self.slots.append(float(value))  # scalar state, e.g. NAdam's mu_product
            self.slot_expressions.append(("const", float(value)))
            self.memoizable = False
            return ("slot", len(self.slots) - 1)
        raise Unfusable(f"an operand of type {type(value).__name__}")


class Proxy:
    """Stands for an array while a rule is recorded; arithmetic records, host reads refuse."""

    __slots__ = ("recording", "ref")
    __array_priority__ = 1000  # win against NumPy scalars on the left

    def __init__(self, recording: Recording, ref: Ref) -> None:
        self.recording = recording
        self.ref = ref

    def _op(self, name: str, *args: Any) -> Proxy:
        return self.recording.record(name, *args)

    def __add__(self, other: Any) -> Proxy:
        return self._op("add", self, other)

    def __radd__(self, other: Any) -> Proxy:
        return self._op("add", other, self)

    def __sub__(self, other: Any) -> Proxy:
        return self._op("sub", self, other)

    def __rsub__(self, other: Any) -> Proxy:
        return self._op("sub", other, self)

    def __mul__(self, other: Any) -> Proxy:
        return self._op("mul", self, other)

    def __rmul__(self, other: Any) -> Proxy:
        return self._op("mul", other, self)

    def __truediv__(self, other: Any) -> Proxy:
        return self._op("div", self, other)

    def __rtruediv__(self, other: Any) -> Proxy:
        return self._op("div", other, self)

    def __neg__(self) -> Proxy:
        return self._op("neg", self)

    def __abs__(self) -> Proxy:
        return self._op("abs", self)

    def __pow__(self, exponent: Any) -> Proxy:
        if not isinstance(exponent, int | float) or isinstance(exponent, bool):
            raise Unfusable("a non-constant exponent")
        return self._op("pow", self, ("const", float(exponent)))

    def __gt__(self, other: Any) -> Proxy:
        return self._op("gt", self, other)

    def __ge__(self, other: Any) -> Proxy:
        return self._op("ge", self, other)

    def __lt__(self, other: Any) -> Proxy:
        return self._op("lt", self, other)

    def __le__(self, other: Any) -> Proxy:
        return self._op("le", self, other)

    def __eq__(self, other: Any) -> Proxy:  # type: ignore[override]
        return self._op("eq", self, other)

    def __ne__(self, other: Any) -> Proxy:  # type: ignore[override]
        return self._op("ne", self, other)

    def __matmul__(self, other: Any) -> Proxy:
        return self._op("matmul", self, other)

    def __and__(self, other: Any) -> Proxy:
        return self._op("and", self, other)

    def __or__(self, other: Any) -> Proxy:
        return self._op("or", self, other)

    @property
    def ndim(self) -> int:
        return self.recording.ndim

    # -- for the partial sums of rules with group-wide scalars (:mod:`._group_fast`) --
    def sum(self) -> Proxy:
        """The sum of all elements: one value per tensor, like ``norm``."""
        return self._op("sum", self)

    def reshape(self, *shape: Any) -> Proxy:
        """Only ``reshape(-1)`` of a recording over flat tensors (``ndim == 1``): itself."""
        if shape in ((-1,), ((-1,),)) and self.recording.ndim == 1:
            return self
        raise Unfusable(f"reshape{shape} of a {self.recording.ndim}-d array")

    def __getitem__(self, key: Any) -> Proxy:
        """Only the whole-array slice ``[:]``/``[::1]``: itself."""
        if (
            isinstance(key, slice)
            and key.start is None
            and key.stop is None
            and key.step in (None, 1)
        ):
            return self
        raise Unfusable(f"indexing with {key!r}")

    def __bool__(self) -> bool:
        raise Unfusable("a branch on array values")

    def __float__(self) -> float:
        raise Unfusable("an array value read on the host")

    def __getattr__(self, name: str) -> Any:
        raise Unfusable(f"the array attribute {name!r}")

    __hash__ = None  # type: ignore[assignment]


def _owner(*values: Any) -> Recording:
    for value in values:
        if isinstance(value, Proxy):
            return value.recording
    raise Unfusable("an xp function called without any array")


def _clip(x: Any, low: float | None, high: float | None) -> Any:
    low = float("-inf") if low is None else low
    high = float("inf") if high is None else high
    return _owner(x).record("clip", x, low, high)


def _along(name: str) -> Callable[[Any, int], Any]:
    """A reduction along ``axis``: the axis is part of the structure, not a slot."""

    def record(x: Any, axis: int) -> Any:
        return _owner(x).record(name, x, ("const", int(axis)))

    return record


def _axis_piece(vector: Any, like: Any, axis: int) -> Any:
    """:func:`adaptim.algorithms._axes.axis_piece`, recorded (the axis is part of the structure)."""
    return _owner(vector, like).record("axis_piece", vector, like, ("const", int(axis)))


def _per_tensor(function: Callable[..., Any], kind: str, *arrays: Any) -> Any:
    """``function(xp, *arrays)`` as one operation the replay calls tensor by tensor."""
    if kind not in ("element", "reduced"):
        raise Unfusable(f"a per-tensor function of kind {kind!r}")
    return _owner(*arrays).record("per_tensor", ("const", function), ("const", kind), *arrays)


def _recorded(name: str) -> Callable[..., Any]:
    def record(*args: Any) -> Any:
        return _owner(*args).record(name, *args)

    return record


#: The ``xp`` a rule sees while it is recorded.
RECORDING_OPS = ArrayOps(
    name="recording",
    sqrt=_recorded("sqrt"),
    maximum=_recorded("maximum"),
    abs=_recorded("abs"),
    where=_recorded("where"),
    clip=_clip,
    norm=_recorded("norm"),
    axpy=_recorded("axpy"),
    addcmul=_recorded("addcmul"),
    lerp=_recorded("lerp"),
    # (float32/float64: the formula, in ATen's order of roundings; see HALF_RECORDING_OPS)
    addcdiv=addcdiv,
    rsqrt=_recorded("rsqrt"),
    mean_square=_along("mean_square"),
    mean=_along("mean"),
    eps_of=_recorded("eps_of"),
    rms=_recorded("rms"),
    per_tensor=_per_tensor,
    minimum=_recorded("minimum"),
    axis_piece=_axis_piece,
    axis_maxima=_recorded("axis_maxima"),
    scalar=host_scalar,
)

#: The ``xp`` of a float16 or bfloat16 partition: ``addcdiv`` is one operation, as
#: torch's kernel (float32 inside, one rounding) is not its formula in a half type.
HALF_RECORDING_OPS = dataclasses.replace(
    RECORDING_OPS, name="recording-half", addcdiv=_recorded("addcdiv")
)
