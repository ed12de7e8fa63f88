"""The square root the vector loops inline is ``torch.sqrt``'s, bit for bit, on every kind of value.

:mod:`adaptim.torch._native_vector` writes MKL's root on 16 float32 lanes where
the CPU has AVX-512 (two 8-lane ``rsqrtps``, the rest on the whole vector) and
on 8 (4 for float64) with AVX2; :func:`adaptim.torch._mkl_sqrt.emulated` checks
the 8-lane tile once per process. This runs the loops' own root, through
:func:`~adaptim.torch._native_vector.vector_pass` (whole vectors, then the
padded rest), on MKL's rare values (zeros, subnormals, negatives, infinities,
NaN, the top binade), the mantissas ``rsqrtps`` reads, and Hypothesis-drawn bit
patterns, against ``torch.sqrt``.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptim.torch import _mkl_sqrt, _native, _native_vector

DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
INTEGER = {torch.float32: torch.int32, torch.float64: torch.int64}


@functools.cache
def loop_root(dtype: torch.dtype) -> Callable[[int, int, int], None]:
    """``f(n, x, r)``: ``r = sqrt(x)`` as the vector loops compute it."""
    pass_lines = _native_vector.vector_pass(
        [("a", "x")], ["const V b = root_v(a, plain);"], [("r", "b")]
    )
    source = "\n".join(
        [
            "#include <math.h>",
            "#include <stdint.h>",
            f"typedef {'float' if dtype == torch.float32 else 'double'} T;",
            *_native_vector.helpers(dtype),
            "void root(int64_t n, const T* x, T* r) {",
            "  const int64_t begin = 0, end = n;",
            *pass_lines,
            "}",
        ]
    )
    function = ctypes.CDLL(str(_native.build_library(source, "root"))).root
    function.restype = None
    function.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    return function  # type: ignore[no-any-return]


def assert_roots(values: torch.Tensor) -> None:
    """The loops' root against ``torch.sqrt``, where the C is what MKL runs on this CPU.

    Elsewhere (another MKL kernel: :func:`~adaptim.torch._mkl_sqrt.emulated`
    false) the vector loop is not used for the exact root; what must hold
    there is that the check says so and MKL's own function is found (the
    per-axis loops call it).
    """
    if not _mkl_sqrt.emulated(values.dtype):
        assert _mkl_sqrt.vml_sqrt(values.dtype) is not None
        return
    got = torch.empty_like(values)
    loop_root(values.dtype)(values.numel(), values.data_ptr(), got.data_ptr())
    integer = INTEGER[values.dtype]
    assert torch.equal(got.view(integer), torch.sqrt(values).view(integer))


@DTYPES
def test_loop_root_equals_torch_sqrt_on_the_rare_and_the_mantissas(dtype: torch.dtype) -> None:
    assert_roots(_mkl_sqrt._probe_values(dtype, 1 << 15))
    if dtype == torch.float32:  # 262,144 mantissas of [1, 4), each low-bit residue
        steps = torch.arange(1 << 18, dtype=torch.int32)
        assert_roots((0x3F800000 + steps * 64 + steps % 64).view(dtype))


@DTYPES
@settings(max_examples=30, deadline=None)
@given(bits=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=70))
def test_loop_root_equals_torch_sqrt_on_drawn_bit_patterns(
    dtype: torch.dtype, bits: list[int]
) -> None:
    """Any pattern (NaN payloads, negatives, subnormals), any length (the padded rest)."""
    width = 32 if dtype == torch.float32 else 64
    signed = [(b >> (64 - width)) - (1 << width) * ((b >> 63) & 1) for b in bits]
    values = torch.tensor(signed, dtype=INTEGER[dtype]).view(dtype)
    assert_roots(values)
