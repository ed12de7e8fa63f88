"""SM3's fast path (``fused=True``, and the default on large groups) against its reference path.

The engine runs SM3's vectors and scalars in the native loop and its matrices
in the per-axis loop of ``adaptim.torch._fuse_axes``, one pass per element with
the correctly rounded square root (the native loop's default, ``EXACT_ROOT``
off); rank-3 tensors take the multi-tensor lines. Whatever the mix of ranks,
dtypes and threads (two threads split a large matrix's rows and combine the
column maxima), the result must be the per-tensor reference path's
(``foreach=False``): the accumulators bit for bit (ν has no square root in it;
a maximum does not depend on the order it is taken in), parameters and
momentum to rounding.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
import torch
from _threads import num_threads
from hypothesis import given, note, settings
from hypothesis import strategies as st
from test_torch_parity import PHASES

import adaptim
from adaptim.torch import _fuse_axes, _native

THREADS = pytest.mark.parametrize("threads", [1, 2], ids=["1-thread", "2-threads"])

#: Shapes of every rank SM3 treats differently: scalars and vectors (one accumulator per
#: element), matrices (a row and a column), rank 3 (one piece per axis).
SHAPES = st.one_of(
    st.just(()),
    st.tuples(st.integers(1, 300)),
    st.tuples(st.integers(1, 120), st.integers(1, 300)),
    st.tuples(st.integers(1, 6), st.integers(1, 20), st.integers(1, 30)),
)
#: Large enough that two threads split its rows (``_fuse.PARALLEL_MIN_NUMEL``).
LARGE = (190, 180)
#: float64 carries the root's last-bit difference ~1e-16 a step, float32 ~1e-7.
TOLERANCE = {torch.float32: (2e-5, 1e-6), torch.float64: (1e-12, 1e-14)}


def counting_rounded_loops() -> Any:
    """Count the per-axis loops that ran with the correctly rounded root."""
    calls = [0]
    original = _fuse_axes.FusedAxesRun.__call__

    def counted(self: _fuse_axes.FusedAxesRun, *args: Any) -> None:
        calls[0] += self.rounded and self.axes
        original(self, *args)

    return calls, mock.patch.object(_fuse_axes.FusedAxesRun, "__call__", counted)


@THREADS
@settings(max_examples=6, deadline=None, phases=PHASES)
@given(
    shapes=st.lists(SHAPES, min_size=1, max_size=5),
    large=st.booleans(),
    momentum=st.sampled_from([0.9, 0.0, 0.5]),
    eps=st.sampled_from([1e-8, 0.0, 1e-3]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
    dead=st.booleans(),
)
def test_the_fast_path_equals_the_reference_path(
    threads: int,
    shapes: list[tuple[int, ...]],
    large: bool,
    momentum: float,
    eps: float,
    dtype: torch.dtype,
    seed: int,
    dead: bool,
) -> None:
    """``adaptim.SM3(params, fused=True)`` on drawn ranks 0-3 against ``foreach=False``."""
    shapes = [*shapes, LARGE] if large else shapes
    note(f"{shapes} {dtype}")
    options = {"momentum": momentum, "eps": eps, "lr": 0.03}
    results = []
    calls, counting = counting_rounded_loops()
    for fused in (True, None):
        generator = torch.Generator().manual_seed(seed)
        params = [
            torch.nn.Parameter(torch.randn(s, generator=generator, dtype=dtype)) for s in shapes
        ]
        fast = {"fused": True} if fused else {"foreach": False}
        optimizer = adaptim.SM3(params, **fast, **options)
        with num_threads(threads), counting, mock.patch.object(_native, "EXACT_ROOT", False):
            for step in range(4):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=generator, dtype=dtype)
                    if dead and step < 2 and p.ndim == 2:  # zero rows and columns: ν stays 0
                        p.grad[::2] = 0.0
                        p.grad[:, ::3] = 0.0
                optimizer.step()
        results.append((params, optimizer))
    matrices = sum(len(s) == 2 for s in shapes)
    assert calls[0] == (4 if matrices else 0)  # (one loop a step over all the matrices)
    (params, optimizer), (expected, reference) = results
    rtol, atol = TOLERANCE[dtype]
    for p, q in zip(params, expected, strict=True):
        state, twin = optimizer.state[p], reference.state[q]
        assert torch.equal(state["accumulator"], twin["accumulator"]), tuple(p.shape)
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol)
        if momentum:
            torch.testing.assert_close(
                state["momentum_buffer"], twin["momentum_buffer"], rtol=rtol, atol=atol
            )
