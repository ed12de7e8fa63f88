"""Remember a recording across steps: the rule's scalar arithmetic as a function of step and hyperparameters.

Recording the rule (:mod:`._trace`) costs tens of microseconds a step, about
as much as torch's whole fused step on a small model. Its result changes from
step to step only through the *slots*, the scalars the rule computes from the
step count and the hyperparameters (``lr/(1-β₁ᵗ)``, ``1-β₂``, ...).

So the first step of a partition records the rule with :class:`Sym` numbers
for the step count and every numeric hyperparameter. A ``Sym`` computes its
value exactly as a Python float would, and also remembers how it was
computed. What the rule decided from them (``if weight_decay != 0``, ``if
momentum > 0``) becomes a *guard*. The result is a :class:`Memo`: the
structure, one generated Python function that checks the guards and
recomputes every slot from new leaf values, and nothing else. Later steps
call that function (a few microseconds) instead of re-running the rule; a
failed guard (RAdam leaving its warm-up, a scheduler setting ``weight_decay``
to zero) records the rule again and keeps both memos.

Scalar state (NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``: 0-d tensors
in torch's scalar dtype) enters as :class:`SymTensor` leaves. Their
arithmetic is the tensor's own, and the memo replays it with the same tensor
operations on the new values, so it rounds as the rule does, bit for bit;
``xp.scalar`` of one (the reference path's ``float()``) is a ``Sym``. The
memo returns the new scalar state along with the slots.

A rule that does anything else with a ``Sym`` or a ``SymTensor``
(``float()`` on it, a comparison of a ``SymTensor``, arithmetic with an
array) raises :class:`NotMemoizable`, and that partition records the rule on
every step, as before.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from adaptim.torch._trace import Structure

# An expression: ("leaf", index) | ("const", value) | (op, expression, ...)
Expression = tuple[Any, ...]

_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "**": operator.pow,
}
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


class NotMemoizable(Exception):
    """The rule used a symbolic number in a way a memo cannot replay."""


class Context:
    """The guards one recording collected."""

    def __init__(self) -> None:
        self.guards: list[tuple[str, Expression, Expression, bool]] = []


class _Arithmetic:
    """The arithmetic operators of :class:`Sym` and :class:`SymTensor`, each one
    ``_binary`` call (``reflected``: the symbolic value is the right operand)."""

    def _binary(self, op: str, other: Any, reflected: bool) -> Any:
        raise NotImplementedError

    def __add__(self, other: Any) -> Any:
        return self._binary("+", other, False)

    def __radd__(self, other: Any) -> Any:
        return self._binary("+", other, True)

    def __sub__(self, other: Any) -> Any:
        return self._binary("-", other, False)

    def __rsub__(self, other: Any) -> Any:
        return self._binary("-", other, True)

    def __mul__(self, other: Any) -> Any:
        return self._binary("*", other, False)

    def __rmul__(self, other: Any) -> Any:
        return self._binary("*", other, True)

    def __truediv__(self, other: Any) -> Any:
        return self._binary("/", other, False)

    def __rtruediv__(self, other: Any) -> Any:
        return self._binary("/", other, True)

    def __pow__(self, other: Any) -> Any:
        return self._binary("**", other, False)

    def __rpow__(self, other: Any) -> Any:
        return self._binary("**", other, True)


class Sym(_Arithmetic):
    """A number that remembers how it was computed from the leaves."""

    __slots__ = ("context", "expression", "value")

    def __init__(self, context: Context, expression: Expression, value: float) -> None:
        self.context = context
        self.expression = expression
        self.value = value

    def _other(self, other: Any) -> Sym | None:
        if isinstance(other, Sym):
            return other
        if type(other) is float or (type(other) is int):
            return Sym(self.context, ("const", other), other)
        if isinstance(other, torch.Tensor):
            raise NotMemoizable("a symbolic number met a tensor")
        return None

    def _binary(self, op: str, other: Any, reflected: bool) -> Any:
        right = self._other(other)
        if right is None:
            return NotImplemented  # a Proxy's reflected operator records it as a slot
        left, right = (right, self) if reflected else (self, right)
        value = _BINARY[op](left.value, right.value)
        return Sym(self.context, (op, left.expression, right.expression), value)

    def __neg__(self) -> Sym:
        return Sym(self.context, ("neg", self.expression), -self.value)

    def __pos__(self) -> Sym:
        return self

    def __abs__(self) -> Sym:
        return Sym(self.context, ("abs", self.expression), abs(self.value))

    def _compare(self, op: str, other: Any) -> Any:
        right = self._other(other)
        if right is None:
            return NotImplemented
        result = _COMPARE[op](self.value, right.value)
        self.context.guards.append((op, self.expression, right.expression, result))
        return result

    def __lt__(self, other: Any) -> Any:
        return self._compare("<", other)

    def __le__(self, other: Any) -> Any:
        return self._compare("<=", other)

    def __gt__(self, other: Any) -> Any:
        return self._compare(">", other)

    def __ge__(self, other: Any) -> Any:
        return self._compare(">=", other)

    def __eq__(self, other: Any) -> Any:
        return self._compare("==", other)

    def __ne__(self, other: Any) -> Any:
        return self._compare("!=", other)

    def __bool__(self) -> bool:
        return bool(self._compare("!=", 0.0))

    def __float__(self) -> float:
        raise NotMemoizable("float() of a symbolic number")

    def __int__(self) -> int:
        raise NotMemoizable("int() of a symbolic number")

    def __index__(self) -> int:
        raise NotMemoizable("a symbolic number used as an index")

    __hash__ = None  # type: ignore[assignment]


class SymTensor(_Arithmetic):
    """A 0-d scalar-state tensor that remembers how it was computed from the leaves.

    ``value`` is the real tensor: arithmetic with numbers, :class:`Sym` and
    other ``SymTensor`` runs torch's 0-d operation on it (in the state's
    dtype, as the rule would), and the memo repeats that operation.
    """

    __slots__ = ("context", "expression", "value")

    def __init__(self, context: Context, expression: Expression, value: torch.Tensor) -> None:
        self.context = context
        self.expression = expression
        self.value = value

    def host(self) -> Sym:
        """The tensor read on the host as a Python float (``xp.scalar``), as a ``Sym``."""
        return Sym(self.context, ("float", self.expression), float(self.value))

    def _binary(self, op: str, other: Any, reflected: bool) -> Any:
        if isinstance(other, Sym | SymTensor):
            expression, value = other.expression, other.value
        elif type(other) is float or type(other) is int:
            expression, value = ("const", other), other
        else:
            return NotImplemented
        if reflected:
            result = _BINARY[op](value, self.value)
            return SymTensor(self.context, (op, expression, self.expression), result)
        result = _BINARY[op](self.value, value)
        return SymTensor(self.context, (op, self.expression, expression), result)

    def __neg__(self) -> SymTensor:
        return SymTensor(self.context, ("neg", self.expression), -self.value)

    def _refuse(self, *_: Any) -> Any:
        raise NotMemoizable("a scalar-state tensor compared or read without xp.scalar")

    __lt__ = __le__ = __gt__ = __ge__ = __eq__ = __ne__ = _refuse
    __bool__ = __float__ = __int__ = __index__ = _refuse
    __hash__ = None  # type: ignore[assignment]


def host_scalar(value: Any) -> Any:
    """``xp.scalar`` of the recorder: a ``SymTensor`` becomes a ``Sym``, anything else a float."""
    if isinstance(value, SymTensor):
        return value.host()
    return float(value)


def _render(expression: Expression) -> str:
    kind = expression[0]
    if kind == "leaf":
        return f"x{expression[1]}"
    if kind == "const":
        return repr(expression[1])
    if kind == "float":
        return f"float({_render(expression[1])})"
    if kind == "neg":
        return f"(-{_render(expression[1])})"
    if kind == "abs":
        return f"abs({_render(expression[1])})"
    return f"({_render(expression[1])} {kind} {_render(expression[2])})"


@dataclass(frozen=True)
class Memo:
    """A recording that later steps reuse: its structure, and its slots as a function of the leaves."""

    structure: Structure
    #: ``slots(leaves)``: the slot values, then the new values of ``scalar_names``, or
    #: ``None`` when a guard fails.
    slots: Callable[[Sequence[Any]], list[Any] | None]
    source: str
    #: The scalar state the rule sets (its values end the list ``slots`` returns).
    scalar_names: tuple[str, ...] = ()


def make_memo(
    structure: Structure,
    slot_expressions: Sequence[Expression],
    guards: Sequence[tuple[str, Expression, Expression, bool]],
    leaves: int,
    scalar_expressions: Mapping[str, Expression] | None = None,
) -> Memo:
    """Generate the guard-and-slots function of one symbolic recording.

    ``scalar_expressions``: how the rule computed each new scalar-state value
    (:class:`SymTensor` expressions; their leaves are tensors too).
    """
    scalars = dict(scalar_expressions or {})
    lines = ["def memo(leaves):"]
    if leaves:
        names = ", ".join(f"x{i}" for i in range(leaves))
        lines.append(f"    {names}{',' if leaves == 1 else ''} = leaves")
    seen = set()
    for op, left, right, result in guards:
        test = f"({_render(left)} {op} {_render(right)})"
        if test in seen:
            continue
        seen.add(test)
        lines.append(f"    if {'not ' if result else ''}{test}: return None")
    results = [*slot_expressions, *scalars.values()]
    lines.append(f"    return [{', '.join(_render(e) for e in results)}]")
    source = "\n".join(lines) + "\n"
    namespace: dict[str, Any] = {"inf": math.inf, "nan": math.nan}  # repr() of such constants
    exec(compile(source, "<adaptim memo>", "exec"), namespace)
    return Memo(structure, namespace["memo"], source, tuple(scalars))


def _leaves(
    hyperparams: Mapping[str, Any], make: Callable[[int, Any], Any]
) -> tuple[dict[str, Any], list[float], tuple[Any, ...]]:
    """Walk the hyperparameters: every number becomes ``make(leaf index, value)``.

    Returns the converted hyperparameters, the leaf values (leaf 0 is the step
    count, so hyperparameters start at 1) and the *shape* key: every
    non-numeric value (bools, strings, ``None``) and where the numbers sit,
    which a memo is only valid for.
    """
    values: list[float] = []
    shape: list[Any] = []

    def leaf(value: Any) -> Any:
        if type(value) is float or type(value) is int:
            values.append(value)
            shape.append(type(value))
            return make(len(values), value)
        if isinstance(value, tuple | list):
            shape.append(("tuple", len(value)))
            return tuple(leaf(v) for v in value)
        shape.append(("concrete", value))
        return value

    converted = {name: leaf(value) for name, value in hyperparams.items()}
    return converted, values, tuple(shape)


def symbolic_hyperparameters(
    hyperparams: Mapping[str, Any], context: Context
) -> tuple[dict[str, Any], list[float], tuple[Any, ...]]:
    """The hyperparameters with :class:`Sym` leaves, the leaf values and the shape key."""
    return _leaves(hyperparams, lambda index, value: Sym(context, ("leaf", index), value))


def leaves_of(hyperparams: Mapping[str, Any]) -> tuple[list[float], tuple[Any, ...]]:
    """The leaf values and shape key of ``hyperparams``, in :func:`symbolic_hyperparameters`' order."""
    _, values, shape = _leaves(hyperparams, lambda index, value: value)
    return values, shape
