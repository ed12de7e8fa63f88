"""State kept in another dtype than its parameter: each new value rounded where torch rounds it.

torch.optim updates its state in place (``state_sum.addcmul_(grad, grad)``),
so a float32 state of a float64 parameter (Adagrad's ``sum`` after
``model.to(torch.float64)``, which creates its state at construction) holds
the new value rounded to float32 the moment it is computed, and every later
operation of the step (``state_sum.sqrt()``) reads the rounded float32 value.
A rule of :mod:`adaptim.algorithms` is functional: it returns the new state
values, computed in the promoted dtype (float64), and the step stores them at
the end, so the rest of the rule would use the unrounded value.

:func:`update_rounded` makes the rule see what torch's in-place step sees,
for any rule and without changing it: it runs the rule once to learn which
operation produced each returned state value (the n-th torch call, counted
by a :class:`~torch.overrides.TorchFunctionMode`), then runs it again with
the result of those operations converted to the state's dtype as they are
produced, so everything after reads the rounded value in the state's dtype,
as in torch. Only steps with such state pay for the second run. Under
``torch.compile`` this runs outside the graph (a graph break for those
parameters only): Dynamo does not trace the counting mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

Rule = Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def other_dtypes(
    target: torch.Tensor, state: Mapping[str, torch.Tensor | None]
) -> dict[str, torch.dtype]:
    """The per-element state entries whose dtype is not the parameter's."""
    return {
        key: value.dtype
        for key, value in state.items()
        if value is not None and value.ndim > 0 and value.dtype != target.dtype
    }


class _Calls(TorchFunctionMode):
    """Keeps the result of every torch call, in order (alive, so their ``id`` stay unique)."""

    def __init__(self) -> None:
        super().__init__()
        self.results: list[Any] = []

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        self.results.append(result)
        return result


class _RoundAt(TorchFunctionMode):
    """Converts the result of the n-th torch call to ``dtypes[n]``."""

    def __init__(self, dtypes: dict[int, torch.dtype]) -> None:
        super().__init__()
        self.dtypes = dtypes
        self.calls = 0

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        dtype = self.dtypes.get(self.calls)
        self.calls += 1
        if dtype is not None and isinstance(result, torch.Tensor) and result.dtype != dtype:
            return result.to(dtype)
        return result


@torch.compiler.disable  # type: ignore[untyped-decorator]
def update_rounded(
    rule: Rule, dtypes: Mapping[str, torch.dtype]
) -> tuple[torch.Tensor, dict[str, Any]]:
    """``rule()``, each returned state value in ``dtypes`` rounded to it where it is computed.

    The rule must be a pure function of its inputs (the rules of
    :mod:`adaptim.algorithms` are), since it runs twice. A value the rule
    passes through unchanged, one no torch call produced, and one that is
    also the new parameter (ASGD's average while it follows the parameter,
    which torch copies) are left as they are: the step stores them rounded.
    """
    with _Calls() as first:
        new_p, state = rule()
    produced: dict[int, int] = {}  # (where a call returns an earlier result: the first)
    for n, result in enumerate(first.results):
        if isinstance(result, torch.Tensor):
            produced.setdefault(id(result), n)
    at = {
        produced[id(value)]: dtypes[key]
        for key, value in state.items()
        if key in dtypes and id(value) in produced and value is not new_p
    }
    del first, new_p, state
    if not at:
        return rule()
    with _RoundAt(at):
        return rule()


def another_dtype_problem(
    entries: Mapping[str, torch.dtype], dtype: torch.dtype, error: BaseException | str
) -> str:
    """Why a parameter with these state entries of another dtype cannot step, and the remedy.

    (``model.to()`` after the state was made leaves the state in its dtype, as
    torch.optim leaves it; a rule that needs the parameter's dtype refuses it.)
    """
    names = ", ".join(f"{k!r} is {d}" for k, d in sorted(entries.items()))
    return (
        f"its state is in another dtype ({names}; the parameter is {dtype}: moved with "
        f"model.to() after the state was made?), which this rule cannot step ({error}). "
        "optimizer.load_state_dict(optimizer.state_dict()) converts the state to the "
        "parameters' dtypes"
    )


def cannot_step(
    owner: str, index: int, position: int, p: torch.Tensor, problem: str
) -> RuntimeError:
    """The error of a step refused before it changed anything, naming the parameter."""
    return RuntimeError(
        f"{owner}: cannot step param_groups[{index}]['params'][{position}] "
        f"(shape {tuple(p.shape)}): {problem}. Nothing was changed."
    )
