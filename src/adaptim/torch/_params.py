"""torch.optim's checks of a new param group's parameters, with messages that say which one.

torch refuses a group without ``params``, an entry that is not a tensor, a
non-leaf tensor and a parameter already in another group, in the same words
whichever of a model's hundred parameters it is (``can't optimize a non-leaf
Tensor``). :func:`check_params` runs the same checks first, with the same
exception types and the same opening words, and adds where the parameter is
(``param_groups[i]['params'][j]``, its name when the group has names), what it
is, and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def _where(index: int, position: int, entry: Any) -> str:
    where = f"param_groups[{index}]['params'][{position}]"
    if isinstance(entry, tuple) and entry and isinstance(entry[0], str):
        where += f" ({entry[0]!r})"
    return where


def check_params(group: dict[str, Any], index: int, groups: Sequence[Mapping[str, Any]]) -> None:
    """Raise as torch's ``add_param_group`` would, naming the parameter; ``group`` becomes
    param group ``index`` after ``groups``. A one-shot iterable of parameters is kept as a list."""
    if "params" not in group:
        raise KeyError(
            f"params: param_groups[{index}] has no 'params' key (its keys: "
            f"{', '.join(map(repr, group)) or 'none'}); a param group is a dict such as "
            "{'params': model.head.parameters(), 'lr': 1e-3}"
        )
    entries = group["params"]
    if isinstance(entries, set):
        return  # (torch refuses a set with a clear message)
    # (a single tensor goes into a list, as torch puts it)
    entries = group["params"] = [entries] if isinstance(entries, torch.Tensor) else list(entries)
    seen = {id(p): (i, j) for i, g in enumerate(groups) for j, p in enumerate(g["params"])}
    for position, entry in enumerate(entries):
        p = entry[1] if isinstance(entry, tuple) and len(entry) >= 2 else entry  # (name, tensor)
        where = _where(index, position, entry)
        if not isinstance(p, torch.Tensor):
            hint = (
                "; to give several lists of parameters, pass one param group each: "
                "[{'params': first}, {'params': second, 'lr': 1e-4}]"
                if isinstance(p, list | tuple) or hasattr(p, "__next__")
                else ""
            )
            raise TypeError(
                "optimizer can only optimize Tensors, but one of the params is "
                f"{torch.typename(p)}: {where}{hint}"
            )
        if not (p.is_leaf or p.retains_grad):
            made_by = type(p.grad_fn).__name__ if p.grad_fn is not None else "an operation"
            raise ValueError(
                f"can't optimize a non-leaf Tensor: {where}, of shape {tuple(p.shape)}, is "
                f"computed ({made_by}) from other tensors. Give the optimizer the leaf "
                "tensors it is computed from (a module's parameters), or make one with "
                "t.detach().requires_grad_()"
            )
        if id(p) in seen:
            i, j = seen[id(p)]
            raise ValueError(
                "some parameters appear in more than one parameter group: "
                f"{where}, of shape {tuple(p.shape)}, is also param_groups[{i}]['params'][{j}]"
            )
