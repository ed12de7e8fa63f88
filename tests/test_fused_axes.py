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
from unittest import mock

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
from adaptim.torch import _fuse_axes, _mkl_sqrt, _native, _replay

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
@pytest.mark.parametrize("exact_root", [True, False], ids=["EXACT_ROOT", "rounded-root"])
def test_sm3_default_on_a_real_sized_model_takes_the_loop(threads: int, exact_root: bool) -> None:
    """Default arguments, the benchmark's 240² matrices and biases: the loop runs at its own
    threshold; with ``EXACT_ROOT`` the matrices keep the reference path's bits, without it
    (the native path's correctly rounded root) the loop is one pass and agrees to rounding."""
    shapes = [(240, 240), (240,)] * 3
    with num_threads(threads), mock.patch.object(_native, "EXACT_ROOT", exact_root):
        with counting_axes_calls() as calls:
            ours = run_loop(shapes, torch.float32, 5, adaptim.SM3, 3)
        # each step: one loop over the matrices (the biases run native: the group is large)
        assert calls[0] == 3
        reference = run_loop(shapes, torch.float32, 5, lambda p: adaptim.SM3(p, foreach=False), 3)
    (params, optimizer), (expected, twin) = ours, reference
    if exact_root:
        assert_same(
            ([p for p in params if p.ndim == 2], optimizer),
            ([q for q in expected if q.ndim == 2], twin),
        )
    for p, q in zip(params, expected, strict=True):  # the native loops agree to rounding
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        # (ν has no square root in it: the accumulators are the reference's bits either way)
        assert torch.equal(optimizer.state[p]["accumulator"], twin.state[q]["accumulator"])


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

    address = _mkl_sqrt.vml_sqrt(dtype)
    assert address is not None, "this torch has MKL: its sqrt must be found"
    function = ctypes.CFUNCTYPE(
        None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong
    )(address)
    x = torch.tensor(values, dtype=dtype)
    got = torch.empty_like(x)
    function(x.numel(), x.data_ptr(), got.data_ptr(), _mkl_sqrt.VML_MODE)
    assert torch.equal(got, torch.sqrt(x))


#: float32 values where MKL's square root is not the correctly rounded one (a wrong sqrt fails
#: here): the first five on AMD (MKL's AVX2 kernel), the last on Intel (its AVX-512 kernel).
_NOT_ROUNDED = [
    1e-8,
    1e5,
    4.962565898895264,
    0.8847743272781372,
    6.323062896728516,
    1.2490791082382202,
]


@settings(max_examples=30, deadline=None, phases=PHASES)
@given(
    values=st.lists(st.floats(width=32), min_size=1, max_size=300),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    scale=st.sampled_from([1.0, 1e-300, 1e300, -1.0]),
)
def test_the_loops_own_square_root_gives_torch_sqrts_bits(
    values: list[float], dtype: torch.dtype, scale: float
) -> None:
    """The C square root (MKL's algorithm) against ``torch.sqrt``, bit for bit, NaN bits included.

    Drawn values (any float32, scaled into float64's range), every length up
    to 300 (ragged ends), and values where MKL's result is not the correctly
    rounded root. The proof over all 2^32 float32 patterns was a one-off (see
    ``adaptim.torch._mkl_sqrt``); this samples it where CI runs.
    """
    if not _mkl_sqrt.emulated(dtype):  # another MKL kernel here: the loops call MKL's function
        assert _mkl_sqrt.vml_sqrt(dtype) is not None
        return
    function = _mkl_sqrt.tile_sqrt(dtype)
    assert function is not None
    x = torch.tensor(values + _NOT_ROUNDED, dtype=dtype) * (scale if dtype == torch.float64 else 1)
    got = torch.empty_like(x)
    function(x.numel(), x.data_ptr(), got.data_ptr())
    integer = torch.int32 if dtype == torch.float32 else torch.int64
    assert torch.equal(got.view(integer), torch.sqrt(x).view(integer))
    if dtype == torch.float32 and scale == 1.0:  # (numpy's root is the correctly rounded one)
        tail = x[-len(_NOT_ROUNDED) :]
        assert not torch.equal(got[-len(_NOT_ROUNDED) :], torch.from_numpy(tail.numpy() ** 0.5))


def test_the_loops_square_root_keeps_mkls_rounding_mode() -> None:
    """With flush-to-zero set (``torch.set_flush_denormal``), the roots are still ``torch.sqrt``'s."""
    function = _mkl_sqrt.tile_sqrt(torch.float32)
    assert function is not None
    x = torch.tensor([1.5e-38, 2e-38, 1e-45, 3e-39, 7.0, 1.2e-38] * 3)
    expected = torch.sqrt(x)
    got = torch.empty_like(x)
    assert torch.set_flush_denormal(True)
    try:
        function(x.numel(), x.data_ptr(), got.data_ptr())
    finally:
        torch.set_flush_denormal(False)
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))


@THREADS
def test_where_the_c_root_is_not_torchs_the_loop_calls_mkl(threads: int) -> None:
    """Another CPU or MKL (the process check fails): the loop calls MKL's function, same bits."""
    shapes = [(300, 240), (7, 600)]  # (matrices: vectors may run the native kernel)
    sources: list[str] = []
    original = _fuse_axes.FusedAxesRun.source

    def source(self: _fuse_axes.FusedAxesRun, dtype: torch.dtype = torch.float32) -> str:
        sources.append(original(self, dtype))
        return sources[-1]

    with (
        mock.patch.dict(_replay._PLANS, clear=True),
        mock.patch.object(_fuse_axes.FusedAxesRun, "own_sqrt", lambda self, dtype: False),
        mock.patch.object(_fuse_axes.FusedAxesRun, "source", source),
        num_threads(threads),
        counting_axes_calls() as calls,
    ):
        ours = run_loop(shapes, torch.float32, 4, lambda p: adaptim.SM3(p, foreach=True), 3)
        assert torch.get_num_threads() == threads  # (MKL's count came back after each call)
    assert calls[0] == 3 and sources and all("vsqrt((int)(nr * w)" in s for s in sources)
    reference = run_loop(shapes, torch.float32, 4, lambda p: adaptim.SM3(p, foreach=False), 3)
    assert_same(ours, reference)


def test_plans_show_the_per_axis_loop() -> None:
    """``Optimizer.plans()``: the per-axis loop's call, its fallback lines and its C."""
    _, optimizer = run_loop(
        [(240, 240)], torch.float32, 0, lambda p: adaptim.SM3(p, foreach=True), 2
    )
    ((source,),) = optimizer.plans()
    assert ".usable(param, " in source and "axis_maxima(xp, " in source
    own = _mkl_sqrt.emulated(torch.float32)  # (the C root where it is MKL's, else MKL's function)
    call = "mkl_sqrt_tile(nr * w, " if own else "vsqrt((int)(nr * w), "
    assert "void adaptim_axes(" in source and call in source


def test_the_loop_leaves_the_thread_count_as_it_was() -> None:
    """MKL is told one thread for the loop's square roots; torch's count comes back after."""
    with num_threads(2):
        with counting_axes_calls() as calls:
            run_loop(
                [(300, 240), (240,)], torch.float32, 7, lambda p: adaptim.SM3(p, foreach=True), 2
            )
        assert calls[0] == 4  # (the matrix's loop and the bias's, each step)
        assert torch.get_num_threads() == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_square_root_checks_run_on_the_cpu_whatever_the_default_device(
    dtype: torch.dtype,
) -> None:
    """The one-time checks of MKL's root make their probe tensors on the CPU.

    Under a non-CPU default device (the lab's ``with torch.device("cuda")``; here
    ``meta``, which any factory without a device reaches), the first step of a
    CPU model raised from inside the check (``aten::equal`` on meta tensors; on
    CUDA, the C root would be handed device pointers).
    """
    on_cpu = (_mkl_sqrt.vml_sqrt(dtype), _mkl_sqrt.emulated(dtype))
    _mkl_sqrt.vml_sqrt.cache_clear()
    _mkl_sqrt.emulated.cache_clear()
    try:
        with torch.device("meta"):
            assert (_mkl_sqrt.vml_sqrt(dtype), _mkl_sqrt.emulated(dtype)) == on_cpu
    finally:
        _mkl_sqrt.vml_sqrt.cache_clear()
        _mkl_sqrt.emulated.cache_clear()
