"""The engine's per-step bookkeeping, made cheap, still sees every change.

Each step reads every gradient once for the whole param group, and the
partitions take theirs from that list by position (``Partition.positions``,
kept between steps while the group lists the same parameters). The Triton
path keeps its pointer table as a NumPy array whose gradient slice is
rewritten when a gradient moved. These tests step groups whose parameters
split into several partitions (two dtypes, drawn in any order), whose
gradients go missing and come back or move to new addresses, and whose
parameter list is reordered between steps, and compare the parameters with torch.optim's for-loop: a gradient handed to
the wrong parameter, or a stale pointer, would be off by the size of a step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim
from adaptim.torch import _triton

STEPS = 4
#: float32 through the native loop's or the interpreter's own roundings.
TOLERANCE = 1e-5

MAKERS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "Adam": (adaptim.Adam, torch.optim.Adam),
    "SGD": (
        functools.partial(adaptim.SGD, lr=0.1, momentum=0.9),
        functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
    ),
    "AdamW": (adaptim.AdamW, torch.optim.AdamW),
}


def run(
    make: Callable[..., Any],
    dtypes: list[torch.dtype],
    present: list[list[bool]],
    seed: int,
    *,
    move_grads: bool,
    reverse_at: int | None,
) -> list[torch.Tensor]:
    """The parameters after :data:`STEPS` steps with fresh gradients (``present[step][i]``:
    whether parameter ``i`` has one; ``reverse_at``: the step before which the group's
    list is reversed)."""
    generator = torch.Generator().manual_seed(seed)
    params = [
        torch.nn.Parameter(torch.randn(5 + i, generator=generator, dtype=dtype))
        for i, dtype in enumerate(dtypes)
    ]
    optimizer = make(params)
    kept: list[torch.Tensor] = []
    for step in range(STEPS):
        if step == reverse_at:
            optimizer.param_groups[0]["params"].reverse()
        for i, p in enumerate(params):
            grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            if move_grads:
                kept.append(torch.empty(3 + step, dtype=p.dtype))  # the next lands elsewhere
            p.grad = grad if present[step][i] else None
        optimizer.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("path", ["triton", "native", "default"])
@pytest.mark.parametrize("name", sorted(MAKERS))
@settings(max_examples=10, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**16), move=st.booleans())
def test_gradients_reach_their_parameters(
    path: str,
    name: str,
    data: st.DataObject,
    seed: int,
    move: bool,
) -> None:
    """Mixed dtypes (one partition each) in a drawn order, gradients drawn missing per
    step, moved or not, the list reversed at a drawn step: the same parameters as
    torch.optim's for-loop."""
    count = data.draw(st.integers(2, 6))
    dtypes = data.draw(
        st.lists(st.sampled_from([torch.float32, torch.float64]), min_size=count, max_size=count)
    )
    present = data.draw(
        st.lists(
            st.lists(st.booleans(), min_size=count, max_size=count),
            min_size=STEPS,
            max_size=STEPS,
        )
    )
    present[0] = [True] * count  # (every partition is built on the first step)
    reverse_at = data.draw(st.one_of(st.none(), st.integers(1, STEPS - 1)))
    ours_cls, theirs_cls = MAKERS[name]
    options = {"fused": True} if path != "default" else {}
    with pytest.MonkeyPatch.context() as patch:
        if path == "triton":  # the GPU path on CPU tensors, through Triton's interpreter
            patch.setenv("TRITON_INTERPRET", "1")
            patch.setattr(_triton, "DEVICES", frozenset({"cpu", "cuda"}))
        ours = run(
            functools.partial(ours_cls, **options),
            dtypes,
            present,
            seed,
            move_grads=move,
            reverse_at=reverse_at,
        )
    theirs = run(
        functools.partial(theirs_cls, foreach=False),
        dtypes,
        present,
        seed,
        move_grads=move,
        reverse_at=reverse_at,
    )
    for a, b in zip(ours, theirs, strict=True):
        scale = b.abs().max().clamp_min(1.0)
        assert float((a - b).abs().max() / scale) <= TOLERANCE, (a, b)
