"""The 8-bit loop's vector update (:mod:`adaptim.torch._lowmem_vector`) against the scalar loop.

Where the compiler targets AVX-512 the default (non-exact) 8-bit loop updates a
block on vectors, dividing without the divider; elsewhere both sides of these
tests are the scalar loop and they hold trivially.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptim
from adaptim.torch import _lowmem_native, _lowmem_native_source, _lowmem_vector, _native

_DIVIDE = r"""
#include <math.h>
#include <stdint.h>
typedef float T;
@HEADER
void divide(int64_t n, const float* a, const float* d, float* q) {
#ifdef ADAPTIM_UPDATE_VECTORS
  for (int64_t i = 0; i < n; i += 16)
    _mm512_storeu_ps(q + i, div_v(_mm512_loadu_ps(a + i), _mm512_loadu_ps(d + i)));
#else
  for (int64_t i = 0; i < n; ++i) q[i] = a[i] / d[i];
#endif
}
"""


def _divider() -> Any:
    source = _DIVIDE.replace("@HEADER", _lowmem_vector.header())
    function = ctypes.CDLL(str(_native.build_library(source, "lowmem_divide"))).divide
    function.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return function


def _divide(a: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``div_v`` lane by lane (``a``, ``d``: float32, a multiple of 16 long)."""
    a, d = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(d, np.float32)
    q = np.empty_like(a)
    _divider()(a.size, a.ctypes.data, d.ctypes.data, q.ctypes.data)
    return q


_RARE = [0.0, -0.0, 1e-45, -1e-45, 1e-40, 2.0**-64, 1e30, 3.4e38, np.inf, -np.inf, np.nan]
#: Zeros, subnormals, huge values, infinities, NaN, powers of two and plain values (16).
_EDGES = np.array([*_RARE, 2.0**-63, 2.0**63, 1.0, -1.5, 3.0], dtype=np.float32)


def test_division_of_rare_values_is_the_true_quotient() -> None:
    """Zeros (their sign), subnormals, huge values, infinities and NaN: ``vdivps``'s bits."""
    a, d = np.meshgrid(_EDGES, _EDGES)
    a, d = a.ravel(), d.ravel()
    with np.errstate(all="ignore"):
        expected = a / d
    got = _divide(a, d)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), expected[~nan].view(np.uint32))


@given(st.integers(0, 2**32 - 1), st.booleans())
@settings(max_examples=10, deadline=None)
def test_division_is_within_an_ulp_and_almost_always_the_true_quotient(
    seed: int, near_ones: bool
) -> None:
    """Random operands across the exponent range (the fast lanes and beyond).

    Markstein's correction after one Newton step is the correctly rounded
    quotient except for some divisors whose significand is all or nearly all
    ones (2 of 168M random pairs measured); it is never more than an ulp away.
    """
    rng = np.random.default_rng(seed)
    n = 1 << 16

    def draw(exponents: tuple[int, int]) -> np.ndarray:
        bits = rng.integers(0, 1 << 23, n, dtype=np.uint32)
        bits |= rng.integers(*exponents, n, dtype=np.uint32) << 23
        bits |= rng.integers(0, 2, n, dtype=np.uint32) << 31
        return bits.view(np.float32)

    a, d = draw((1, 255)), draw((60, 195))
    a[0], d[0] = 1.0, float.fromhex("0x1.fffffep0")  # (all ones: one ulp off, always)
    if near_ones:  # (a quarter of them all ones: 1 / (2 - 2^-23) is 2^-24 off, one ulp)
        ones = np.where(rng.integers(0, 4, n) == 0, 0x007FFFFF, 0x007FF000).astype(np.uint32)
        d = (d.view(np.uint32) | ones).view(np.float32)
    with np.errstate(all="ignore"):
        expected = a / d
    got = _divide(a, d)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(got), nan)
    got, expected = got[~nan], expected[~nan]
    apart = np.abs(got.view(np.int32).astype(np.int64) - expected.view(np.int32).astype(np.int64))
    assert int(apart.max()) <= 1
    assert int((apart > 0).sum()) <= 3


def _run(
    vector: bool,
    threads: int,
    scale: float,
    specials: bool,
    sizes: tuple[int, ...] = (9000, 4133, 4096 + 7, 300),  # (300: float32 state)
    steps: int = 6,
    name: str = "adam",
    options: dict[str, object] | None = None,
) -> tuple[list[Any], Any]:
    """An 8-bit optimizer (Adam), the update on vectors or not (a fresh kernel either way)."""
    generator = torch.Generator().manual_seed(7)
    params = [torch.nn.Parameter(torch.randn(n, generator=generator)) for n in sizes]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_lowmem_vector, "VECTOR_UPDATE", vector)
        patch.setattr(_lowmem_native, "_KERNELS", {})
        settings = {"lr": 1e-2, **(options or {})}
        optimizer = adaptim.OPTIMIZERS[name](params, state_bits=8, nonfinite="ignore", **settings)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for _ in range(steps):
                for p in params:
                    g = torch.randn(p.numel(), generator=generator) * scale
                    g *= torch.rand(p.numel(), generator=generator) >= 0.2  # (exact zeros)
                    if specials:
                        g[:8] = torch.tensor([1e-45, -1e-40, 1e30, -3e38, 0.0, -0.0, 1e-30, 5.0])
                    p.grad = g
                optimizer.step()
        finally:
            torch.set_num_threads(previous)
        assert optimizer.fused_status()[0].startswith("native"), optimizer.fused_status()
    if not vector:
        assert "ADAPTIM_UPDATE_VECTORS" not in optimizer.plans()[0][0]
    return params, optimizer


def _same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Equal bit for bit, any NaN equal to any NaN (its sign depends on the operand order)."""
    x, y = x.detach().reshape(-1), y.detach().reshape(-1)
    if x.is_floating_point():
        nan = torch.isnan(x)
        if not torch.equal(nan, torch.isnan(y)):
            return False
        x, y = x[~nan], y[~nan]
    return torch.equal(x, y)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("scale", "specials"), [(1.0, False), (1e-20, False), (1e20, False), (1.0, True)]
)
def test_vector_update_stores_the_scalar_loops_parameters_codes_and_maxima(
    threads: int, scale: float, specials: bool
) -> None:
    """The vector update and the scalar loop store the same parameters, codes and block maxima.

    Gradients of every scale the range checks sort (1e-20: subnormal second
    moments; 1e20: infinite ones and NaN parameters), exact zeros, and
    subnormal, huge and signed-zero entries, on 1 and 2 threads.
    """
    (p_vec, o_vec), (p_sca, o_sca) = (_run(v, threads, scale, specials) for v in (True, False))
    assert "ADAPTIM_UPDATE_VECTORS" in o_vec.plans()[0][0]
    for p, q in zip(p_vec, p_sca, strict=True):
        assert _same_bits(p, q)
        for key, value in o_vec.state[p].items():
            assert _same_bits(value, o_sca.state[q][key]), key


def test_the_exact_loop_keeps_its_scalar_update() -> None:
    """``EXACT_8BIT`` (torch.sqrt's bits, true divisions) never takes the vector update."""
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5000, generator=generator))]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_lowmem_native_source, "EXACT_8BIT", True)
        patch.setattr(_lowmem_native, "_KERNELS", {})
        optimizer = adaptim.Adam(params, state_bits=8)
        for _ in range(2):
            params[0].grad = torch.randn(5000, generator=generator)
            optimizer.step()
        assert "ADAPTIM_UPDATE_VECTORS" not in optimizer.plans()[0][0]


#: Every optimizer with 8-bit state, with the option that changes its rule most.
_RULES = [
    (name, options)
    for name, cls in adaptim.OPTIMIZERS.items()
    if "state_bits" in cls.__init__.__code__.co_varnames
    for options in ({}, {"amsgrad": True}, {"centered": True, "momentum": 0.9})
    if all(key in cls.__init__.__code__.co_varnames for key in options)
]


@pytest.mark.slow  # (two kernels per rule, compiled once per machine)
@pytest.mark.parametrize(("name", "options"), _RULES)
def test_every_8bit_rule_stores_the_scalar_loops_values(
    name: str, options: dict[str, object]
) -> None:
    """Each rule's vector update agrees with the scalar loop; which rules take it (``suits``).

    The rules that divide by an array and select nothing take it; those with
    a ``maximum`` or ``where`` (Adamax, Yogi, AMSGrad, Lion) or no such
    division (RAdam) keep the scalar update.
    """
    runs = [_run(v, 1, 1.0, True, steps=3, name=name, options=options) for v in (True, False)]
    (p_vec, o_vec), (p_sca, o_sca) = runs
    selects = name in ("adamax", "yogi", "lion", "radam") or "amsgrad" in options
    assert ("ADAPTIM_UPDATE_VECTORS" in o_vec.plans()[0][0]) is not selects
    for p, q in zip(p_vec, p_sca, strict=True):
        assert _same_bits(p, q)
        for key, value in o_vec.state[p].items():
            assert _same_bits(value, o_sca.state[q][key]), key


def test_steps_past_the_caches_take_the_scalar_update() -> None:
    """From 1M elements a partition's kernel is the scalar loop's very C (no vector update).

    Its tensors' blocks reach ``PREFETCH_FROM``; a smaller partition of the
    same rule gets the vector update.
    """
    sizes = (1 << 20, 4096 + 7)
    (p_vec, o_vec), (p_sca, o_sca) = (
        _run(v, 1, 1.0, True, sizes=sizes, steps=2) for v in (True, False)
    )
    assert o_vec.plans()[0][0] == o_sca.plans()[0][0]
    assert "ADAPTIM_UPDATE_VECTORS" not in o_vec.plans()[0][0]
    _, small = _run(True, 1, 1.0, False, sizes=((1 << 20) - 256,), steps=1)
    assert "ADAPTIM_UPDATE_VECTORS" in small.plans()[0][0]
    for p, q in zip(p_vec, p_sca, strict=True):
        assert _same_bits(p, q)
        for key, value in o_vec.state[p].items():
            assert _same_bits(value, o_sca.state[q][key]), key
