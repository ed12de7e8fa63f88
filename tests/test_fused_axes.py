"""Fused runs with per-axis operands (``adaptim.torch._fuse_axes``): one pass per matrix, bit for bit.

SM3 reads a row and a column accumulator for every element of a matrix and
keeps their new maxima. The replay runs that stretch of its rule (from
:math:`g^2` to the parameter update, square root included) as one generated
loop over each matrix. It must give the per-tensor reference path's
(``foreach=False``) bits, for parameters and state, with 1 and 2 threads (the
threads split the rows and combine the column maxima), in float32 and
float64, and must really take the loop.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _threads import num_threads
from hypothesis import given, note, settings
from hypothesis import strategies as st
from test_factored_fast import assert_same
from test_factored_fast import run as run_loop
from test_fused_runs import counting_fused_calls
from test_torch_parity import PHASES

import adaptim
from adaptim.torch import _fuse_axes

THREADS = pytest.mark.parametrize("threads", [1, 2], ids=["1-thread", "2-threads"])


def counting_axes_calls(min_numel: int | None = None) -> Any:
    """Count the per-axis loops that ran; ``min_numel`` lowers the size from which chunks fuse."""
    return counting_fused_calls(min_numel, _fuse_axes.FusedAxesRun)


#: Matrices of every aspect: wider and narrower than a tile (256 columns), single rows and columns.
MATRICES = st.tuples(st.integers(1, 300), st.integers(1, 600))


@THREADS
@settings(max_examples=4, deadline=None, phases=PHASES)
@given(
    shapes=st.lists(MATRICES, min_size=1, max_size=4),
    momentum=st.sampled_from([0.9, 0.0, 0.5]),
    eps=st.sampled_from([1e-8, 0.0, 1e-3]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
    dead=st.booleans(),
)
def test_sm3_matrices_take_one_loop_and_equal_the_reference(
    threads: int,
    shapes: list[tuple[int, int]],
    momentum: float,
    eps: float,
    dtype: torch.dtype,
    seed: int,
    dead: bool,
) -> None:
    """``adaptim.SM3`` on drawn matrices: the fused replay against ``foreach=False``, bit for bit."""
    note(f"{shapes} {dtype}")
    options = {"momentum": momentum, "eps": eps, "lr": 0.03}
    results = []
    for foreach in (True, False):
        generator = torch.Generator().manual_seed(seed)
        params = [
            torch.nn.Parameter(torch.randn(s, generator=generator, dtype=dtype)) for s in shapes
        ]
        optimizer = adaptim.SM3(params, foreach=foreach, **options)
        with num_threads(threads), counting_axes_calls(0) as calls:
            for step in range(4):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=generator, dtype=dtype)
                    if dead and step < 2:  # zero rows and columns: ν stays 0 there
                        p.grad[::2] = 0.0
                        p.grad[:, ::3] = 0.0
                optimizer.step()
        assert (calls[0] > 0) == foreach
        results.append((params, optimizer))
    assert_same(results[0], results[1])


@THREADS
def test_sm3_default_on_a_real_sized_model_takes_the_loop(threads: int) -> None:
    """Default arguments, the benchmark's 240² matrices and biases: the loop runs at its own threshold."""
    shapes = [(240, 240), (240,)] * 3
    with num_threads(threads):
        with counting_axes_calls() as calls:
            ours = run_loop(shapes, torch.float32, 5, adaptim.SM3, 3)
        # each step: one loop over the matrices (the biases run native: the group is large)
        assert calls[0] == 3
        reference = run_loop(shapes, torch.float32, 5, lambda p: adaptim.SM3(p, foreach=False), 3)
    (params, optimizer), (expected, twin) = ours, reference
    assert_same(
        ([p for p in params if p.ndim == 2], optimizer),
        ([q for q in expected if q.ndim == 2], twin),
    )
    for p, q in zip(params, expected, strict=True):  # the native loop agrees to rounding
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@THREADS
@pytest.mark.parametrize("layout", ["transposed-grad", "rank-3"])
def test_chunks_the_loop_cannot_take_run_the_multi_tensor_lines(threads: int, layout: str) -> None:
    """A non-contiguous gradient, a rank-3 tensor: the plan's lines run, with the same result."""
    shape = (300, 200) if layout == "transposed-grad" else (3, 200, 100)
    generator = torch.Generator().manual_seed(3)
    start = torch.randn(shape, generator=generator)
    grads = [torch.randn(shape[::-1] if layout == "transposed-grad" else shape) for _ in range(3)]
    results = []
    with num_threads(threads), counting_axes_calls() as calls:
        for foreach in (True, False):
            p = torch.nn.Parameter(start.clone())
            optimizer = adaptim.SM3([p], foreach=foreach)
            for g in grads:
                p.grad = g.t() if layout == "transposed-grad" else g.clone()
                optimizer.step()
            results.append((p.detach(), optimizer.state[p]["accumulator"]))
    assert calls[0] == 0
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


@settings(max_examples=20, deadline=None, phases=PHASES)
@given(
    values=st.lists(
        st.floats(min_value=0.0, allow_infinity=True, allow_nan=False, width=32), min_size=1
    ),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_the_square_root_the_loop_calls_is_torch_sqrt(
    values: list[float], dtype: torch.dtype
) -> None:
    """ATen's ``sqrt`` is MKL's (not the correctly rounded one): the loop calls that same function."""
    import ctypes

    address = _fuse_axes.vml_sqrt(dtype)
    assert address is not None, "this torch has MKL: its sqrt must be found"
    function = ctypes.CFUNCTYPE(
        None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong
    )(address)
    x = torch.tensor(values, dtype=dtype)
    got = torch.empty_like(x)
    function(x.numel(), x.data_ptr(), got.data_ptr(), _fuse_axes.VML_MODE)
    assert torch.equal(got, torch.sqrt(x))


def test_plans_show_the_per_axis_loop() -> None:
    """``Optimizer.plans()``: the per-axis loop's call, its fallback lines and its C."""
    _, optimizer = run_loop([(240, 240)], torch.float32, 0, adaptim.SM3, 2)
    ((source,),) = optimizer.plans()
    assert ".usable(param, " in source and "axis_maxima(xp, " in source
    assert "void adaptim_axes(" in source and "vsqrt((int)(nr * w)" in source


def test_the_loop_leaves_the_thread_count_as_it_was() -> None:
    """MKL is told one thread for the loop's square roots; torch's count comes back after."""
    with num_threads(2):
        with counting_axes_calls() as calls:
            run_loop([(300, 240), (240,)], torch.float32, 7, adaptim.SM3, 2)
        assert calls[0] == 2
        assert torch.get_num_threads() == 2
