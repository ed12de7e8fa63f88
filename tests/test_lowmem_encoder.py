"""The native 8-bit encoder against the plain nearest-code rule, over every float it meets;
the decoder against the table.

The native loop's ``quantize_S``/``quantize_U`` (:mod:`adaptim.torch._lowmem_codes`:
the in-register segment encoder where the CPU has AVX-512 VBMI, the bucket
table elsewhere and for flagged blocks) are compiled alone with a small
driver, so that a billion values take seconds. The reference is the rule
itself: the code of ``x = v/a`` is the number of thresholds (midpoints
between code points) below ``x``, and a positive value never takes the
unsigned code's 0.0, which is :func:`adaptim.torch._lowmem.quantize_blockwise`
(``torch.bucketize``, checked against bitsandbytes in ``test_lowmem.py``).
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptim.torch import _lowmem, _lowmem_codes, _lowmem_native, _lowmem_segments, _native

_DRIVER = r"""
typedef void quantize_fn(const float*, int64_t, uint32_t, uint8_t*, float*);

static uint32_t top_of(const float* v, int64_t m) {
  uint32_t top = 0;
  for (int64_t i = 0; i < m; ++i) {
    uint32_t u; memcpy(&u, v + i, 4); u &= 0x7FFFFFFFu; top = u > top ? u : top;
  }
  return top;
}

/* Blocks of 256 as the native loop stores them: codes and block maxima. */
void adaptim_quantize(int is_signed, const float* v, int64_t n, uint8_t* q, float* absmax) {
  quantize_fn* f = is_signed ? quantize_S : quantize_U;
  for (int64_t c = 0; c < n; c += QBLOCK) {
    const int64_t m = n - c < QBLOCK ? n - c : QBLOCK;
    f(v + c, m, top_of(v + c, m), q + c, absmax + c / QBLOCK);
  }
}

/* `m` codes decoded as the native loop decodes a block (its first `m` codes, m <= 256). */
void adaptim_decode(int is_signed, const uint8_t* q, int64_t m, float a, float* out) {
  if (is_signed) decode_S(q, m, a, out); else decode_U(q, m, a, out);
}

/* Every float32 magnitude from `first` to `last` (bits, stepping by `stride`; at most `top`),
   with the sign `negative`, 255 per block beside a block maximum of `top`; each code is
   compared with the count of `th` (the code's 255 thresholds) below x = v/top (rounded), kept
   by a walk. Returns the mismatches; `bad` gets the bits of the first. */
int64_t adaptim_check(int is_signed, int negative, uint32_t first, uint32_t last,
                      uint32_t stride, const float* th, uint32_t* bad, float top) {
  quantize_fn* f = is_signed ? quantize_S : quantize_U;
  int64_t wrong = 0, p = 0;
  float v[QBLOCK]; uint8_t q[QBLOCK]; float a;
  const float one = negative ? -top : top;
  for (uint64_t bits = first; bits <= last;) {
    v[0] = one;
    int m = 1;
    for (; m < QBLOCK && bits <= last; ++m, bits += stride) {
      const uint32_t b = (uint32_t)bits | (negative ? 0x80000000u : 0u);
      memcpy(v + m, &b, 4);
    }
    f(v, m, top_of(v, m), q, &a);
    for (int i = 0; i < m; ++i) {
      const float x = v[i] / top;
      while (p < 255 && th[p] < x) ++p;
      while (p > 0 && !(th[p - 1] < x)) --p;
      const int want = (!is_signed && x > 0.0f && p == 0) ? 1 : (int)p;
      if (q[i] != want) {
        if (wrong == 0) memcpy(bad, v + i, 4);
        ++wrong;
      }
    }
  }
  return wrong;
}
"""


def _codes_source() -> str:
    """The 8-bit codes' C functions alone (``quantize_S``, ...), as every kernel has them."""
    lines = [*_lowmem_native._HEADER, "#include <omp.h>", *_lowmem_codes.VBMI_HEADER]
    for suffix, signed in (("S", True), ("U", False)):
        lines += _lowmem_segments.code_functions(suffix, signed)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def library() -> ctypes.CDLL:
    path = _native.build_library(_codes_source() + _DRIVER, name="encoder_test")
    lib = ctypes.CDLL(str(path))
    lib.adaptim_check.restype = ctypes.c_int64
    lib.adaptim_check.argtypes = [
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_float,
    ]
    lib.adaptim_decode.restype = None
    lib.adaptim_decode.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_float,
        ctypes.c_void_p,
    ]
    lib.adaptim_quantize.restype = None
    lib.adaptim_quantize.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    return lib


#: 2⁻²⁶: below it every magnitude lies under the first threshold of both codes.
_LOW = 0x32800000
_ONE = 0x3F800000


#: Block maxima for the exhaustive check: 1 (``x = v``), and maxima whose reciprocal is
#: rounded (``x = v·(1/a)`` lies up to 3 steps from ``v/a``), largest and smallest
#: significands (the unsigned code multiplies only up to 1: above it the division runs).
_CASES = [
    (True, False, 1.0),
    (True, True, 1.0),
    (False, False, 1.0),
    (True, False, 0.7),
    (True, True, 1.9999999),
    (True, False, 3.0e-5),
    (False, False, 0.7),
    (False, False, 3.0e-5),
]


def _bits(value: float) -> int:
    return int(np.array(value, np.float32).view(np.uint32))


@pytest.mark.slow
@pytest.mark.parametrize(("signed", "negative", "top"), _CASES)
def test_every_float_below_the_block_maximum_gets_the_nearest_code(
    library: ctypes.CDLL, signed: bool, negative: bool, top: float
) -> None:
    """Every float32 of magnitude 2⁻²⁶·a..a (218M per sign and maximum ``a``), and every 97th
    below (zeros, denormals)."""
    thresholds = np.ascontiguousarray(_lowmem._thresholds(signed).numpy(), dtype=np.float32)
    assert thresholds.size == 255 and np.all(np.diff(thresholds) > 0)
    bad = np.zeros(1, np.uint32)
    low, high = _bits(top) - (_ONE - _LOW), _bits(top)
    for first, last, stride in ((0, low, 97), (low, high, 1)):
        wrong = library.adaptim_check(
            int(signed),
            int(negative),
            first,
            last,
            stride,
            thresholds.ctypes.data,
            bad.ctypes.data,
            np.float32(top),
        )
        assert wrong == 0, (wrong, float(bad.view(np.float32)[0]))


@given(
    st.floats(min_value=2.0**-149, max_value=2.0**127, width=32),
    st.booleans(),
    st.integers(0, 2**31),
)
@settings(max_examples=40, deadline=None)
def test_any_block_maximum_gives_the_reference_codes(
    library: ctypes.CDLL, scale: float, signed: bool, seed: int
) -> None:
    """``x = v/a`` rounds: values at and beside every threshold times ``a`` (any positive float32,
    denormals too), code points, zeros and random values, against ``quantize_blockwise``."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.tensor(scale, dtype=torch.float32)
    points = torch.cat([_lowmem._thresholds(signed), _lowmem.dynamic_code(signed)]) * a
    near = [points]
    for _ in range(3):
        near += [torch.nextafter(near[-1], 2 * near[-1]), torch.nextafter(near[0], -2 * near[0])]
    noise = (torch.rand(3000, generator=generator) * 2 - 1) * a
    tiny = noise * torch.rand(3000, generator=generator) ** 20
    values = torch.cat([*near, noise, tiny, torch.zeros(40), -torch.zeros(40)])
    values = values[torch.randperm(values.numel(), generator=generator)]
    values = torch.cat([values, torch.zeros(-values.numel() % 255 + 7)])
    blocks = values[: values.numel() // 255 * 255].view(-1, 255).clamp(-a, a)
    values = torch.cat([a.expand(blocks.shape[0], 1), blocks], dim=1).reshape(-1)
    values = torch.cat([values, values[:7] / 3])  # (a partial last block)
    if not signed:
        values = torch.where(values.signbit() & (values != 0), -values, values)
    values = values.contiguous()
    codes = torch.empty(values.numel(), dtype=torch.uint8)
    absmax = torch.empty(-(-values.numel() // _lowmem.BLOCK), dtype=torch.float32)
    library.adaptim_quantize(
        int(signed), values.data_ptr(), values.numel(), codes.data_ptr(), absmax.data_ptr()
    )
    expected_codes, expected_absmax = _lowmem.quantize_blockwise(values, signed)
    assert torch.equal(absmax, expected_absmax)
    assert torch.equal(codes, expected_codes)


_MAXIMA = st.one_of(
    st.floats(min_value=0.0, max_value=2.0**127, width=32),  # (0, denormals, normals)
    st.sampled_from([0.0, 2.0**-149, 2.0**-126, 1.0, float("inf"), float("nan")]),
)


@given(
    _MAXIMA,
    st.booleans(),
    st.integers(1, _lowmem.BLOCK),
    st.lists(st.integers(0, 255), min_size=_lowmem.BLOCK, max_size=_lowmem.BLOCK),
    st.integers(0, 255),
)
@settings(max_examples=60, deadline=None)
def test_decoder_gives_the_table_times_the_block_maximum(
    library: ctypes.CDLL, top: float, signed: bool, m: int, drawn: list[int], shift: int
) -> None:
    """Each code decodes to ``code[q]·a`` (float32), bit for bit, for any block maximum ``a``
    (0, denormal, inf and NaN too): a block holding all 256 codes (rotated by ``shift``) and a
    drawn one, whole or cut at ``m`` (the in-register path takes 64 codes at a time, the tail
    the plain look-up)."""
    table = _lowmem.dynamic_code(signed)
    a = torch.tensor(top, dtype=torch.float32)
    for codes in (torch.arange(256).roll(shift), torch.tensor(drawn)):
        q = codes.to(torch.uint8)[:m].contiguous()
        out = torch.empty(m, dtype=torch.float32)
        library.adaptim_decode(int(signed), q.data_ptr(), m, np.float32(top), out.data_ptr())
        expected = table[q.long()] * a
        nan = expected.isnan()
        assert torch.equal(out.isnan(), nan)
        assert torch.equal(out[~nan].view(torch.int32), expected[~nan].view(torch.int32))
