"""What a build holds: every tensor a ``Setup`` reaches (parameters, data, batch indices).

Used by the device tests to check that a build under a foreign default device
draws the same bits and puts everything on ``BuildContext.device``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from adaptim.lab.problems import Setup


def reachable_tensors(setup: Setup) -> list[tuple[str, torch.Tensor]]:
    """Every tensor the setup's parameters and functions hold, with a path naming it, in a fixed order.

    Follows closures, modules (parameters and buffers), dataclasses, containers and
    plain objects' attributes; functions without a closure (module-level ones) end the walk.
    """
    found: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()

    def walk(path: str, value: Any) -> None:
        if id(value) in seen or value is None or isinstance(value, str | int | float | bool):
            return
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            found.append((path, value))
        elif isinstance(value, nn.Module):
            for name, tensor in [*value.named_parameters(), *value.named_buffers()]:
                walk(f"{path}.{name}", tensor)
        elif callable(value) and hasattr(value, "__code__"):
            names = value.__code__.co_freevars
            for name, cell in zip(names, value.__closure__ or (), strict=True):
                try:
                    walk(f"{path}<{name}>", cell.cell_contents)
                except ValueError:  # an empty cell
                    continue
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for field in dataclasses.fields(value):
                walk(f"{path}.{field.name}", getattr(value, field.name))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{path}[{key!r}]", item)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(f"{path}[{index}]", item)
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            for name, item in vars(value).items():
                walk(f"{path}.{name}", item)

    walk("setup", setup)
    return found
