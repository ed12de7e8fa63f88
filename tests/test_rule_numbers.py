"""A rule may pass a number to ``xp.maximum``/``xp.minimum``, on every path alike.

``torch.maximum`` takes tensors only, so the eager (reference) path raised on
``xp.maximum(g, 0.01)`` while the tracer recorded it and the native loop and
the replay ran it. Every path must run such a rule, to the same bits.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine import _optimizer_class, assert_close, make_model, train

from adaptim.torch._torch_ops import TORCH_OPS

PATHS = {
    "default": {},
    "native": {"fused": True},
    "replay": {"foreach": True},
    "reference": {"foreach": False},
}


def _clipped_rule(low: float, high: float, number_first: bool) -> Any:
    def clipped_sgd(
        p: Any, g: Any, state: Any, *, step: float, xp: Any, lr: float, **_: Any
    ) -> Any:
        """SGD on the gradient clipped to ``[low, high]`` by a maximum and a minimum."""
        if number_first:
            clipped = xp.minimum(high, xp.maximum(low, g))
        else:
            clipped = xp.minimum(xp.maximum(g, low), high)
        return p - lr * clipped, {}

    return clipped_sgd


@settings(max_examples=6)
@given(
    low=st.floats(-0.2, 0.0),
    width=st.floats(0.0, 0.3),
    number_first=st.booleans(),
    path=st.sampled_from(sorted(PATHS)),
)
def test_maximum_and_minimum_with_a_number_run_on_every_path(
    low: float, width: float, number_first: bool, path: str
) -> None:
    cls = _optimizer_class(_clipped_rule(low, low + width, number_first), "clippedsgd")
    model, reference_model = make_model(), make_model()
    ours = cls(model.parameters(), **PATHS[path])
    theirs = cls(reference_model.parameters(), foreach=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback: every path takes the rule
        train(model, ours, 3)
    train(reference_model, theirs, 3)
    assert_close(model, reference_model, tolerance=0.0)
    assert not ours.fused_status()[0].startswith("reference: the rule")


def test_maximum_of_two_numbers_is_refused_clearly() -> None:
    with pytest.raises(TypeError, match="one side must be an array"):
        TORCH_OPS.maximum(1.0, 2.0)
    got = TORCH_OPS.maximum(torch.tensor([0.5, -1.0, float("nan")]), 0.0)
    assert torch.equal(got[:2], torch.tensor([0.5, 0.0])) and got[2].isnan()
