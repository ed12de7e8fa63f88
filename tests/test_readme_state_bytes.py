"""The README's optimizer table states each optimizer's measured state size; it must stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import adaptim

README = Path(__file__).resolve().parents[1] / "README.md"
CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    cls.__name__: cls
    for cls in [
        *adaptim.OPTIMIZERS.values(),
        *adaptim.LR_FREE_OPTIMIZERS.values(),
        *adaptim.RESTRICTED_OPTIMIZERS.values(),
    ]
}


def _table() -> dict[str, str]:
    """``class name -> bytes/param cell`` from the table under "What each optimizer takes"."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### What each optimizer takes", 1)[1]
    rows: dict[str, str] = {}
    for line in section.splitlines()[2:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        match = re.fullmatch(r"`(\w+)`", cells[0])
        if match:
            rows[match.group(1)] = cells[-1]
    return rows


def _measured(name: str) -> float:
    generator = torch.Generator().manual_seed(0)
    p = torch.randn(128, 128, generator=generator).requires_grad_(True)
    if name == "Mechanic":
        optimizer: torch.optim.Optimizer = adaptim.Mechanic(adaptim.Adam([p]))
    else:
        optimizer = CLASSES[name]([p])
    train = getattr(optimizer, "train", None)
    if callable(train):  # Schedule-Free steps in train mode only
        train()
    grad = torch.randn(128, 128, generator=generator)
    p.grad = grad.to_sparse(1) if name == "SparseAdam" else grad
    optimizer.step()
    states = [optimizer.state.get(p, {})]
    base = getattr(optimizer, "base", None)
    if base is not None:
        states.append(base.state.get(p, {}))
    nbytes = sum(v.nbytes for s in states for v in s.values() if isinstance(v, torch.Tensor))
    return nbytes / p.numel()


def test_every_optimizer_has_a_row() -> None:
    assert set(_table()) == {*CLASSES, "Mechanic"}


@pytest.mark.parametrize("name", [*CLASSES, "Mechanic"])
def test_the_stated_state_size_is_the_measured_one(name: str) -> None:
    stated = float(_table()[name])
    assert _measured(name) == pytest.approx(stated, rel=0.01, abs=0.005), name
