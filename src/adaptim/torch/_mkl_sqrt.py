"""ATen's square root on CPU, bit for bit: MKL's function, and the same algorithm in C.

``torch.sqrt`` on CPU is MKL's ``vmsSqrt``/``vmdSqrt`` in high-accuracy mode
(``VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE``), which is not the correctly
rounded square root. A fused loop that must give ``torch.sqrt``'s bits either
calls that function (:func:`vml_sqrt`: its address in ``libtorch_cpu.so``,
about 0.6–0.8 ns an element on tiles of 256, most of it outside the arithmetic)
or computes the same thing itself (:func:`tile_sqrt_source`).

MKL 2024.2 dispatches on the CPU, and the kernel it picks decides the bits.
The C reproduces two of them (:data:`KERNELS`, read from the disassembly):

``EXHAynn`` (AVX2; what AMD EPYC Zen 4 gets), for a positive normal :math:`x`,
with every product and sum rounded on its own (no FMA), differing from the
correctly rounded root on 17% of positive normal float32 values:

* float32: :math:`y = \\mathrm{rsqrtps}(x)` (the CPU's 12-bit reciprocal square
  root), :math:`s = xy`, :math:`h = y/2`, :math:`e = 1/2 - sh`,
  :math:`s' = se + s`, :math:`h' = he + h`, result :math:`(x - s'^2) h' + s'`;
* float64: ``rsqrtps`` of a float made of :math:`x`'s exponent parity and top
  23 mantissa bits, scaled back by an exponent built with integer arithmetic
  (:math:`t \\approx x^{-1/2}`), :math:`x = x_h + x_l` (:math:`x_h`: 24 bits),
  :math:`e = (1 - x_h t^2) - x_l t^2`, a degree-4 polynomial
  :math:`p(e) \\approx (1-e)^{-1/2} - 1`, result :math:`x_h t + (x_l t + p t x)`.

  Zeros, subnormals, negatives, infinities, NaN and the largest values (float32
  above :math:`2^{128}(1-2^{-12})`, float64 from :math:`2^{1022}`) take MKL's
  rare path, which gives the correctly rounded root (``vsqrtps``), NaN bits kept
  for NaN and ``+qNaN`` for negatives. ``rsqrtps`` is the CPU's own table
  (AMD's differs from Intel's). Checked on the AMD machine: all :math:`2^{32}`
  float32 patterns, :math:`10^9` random float64 and 1.35 million edge patterns.

``Z0HAynn`` (AVX-512; what Intel Xeon with AVX-512 gets, Emerald Rapids here),
with FMA (:math:`\\mathrm{fma}(a, b, c)`: one rounding), differing from the
correctly rounded root on 0.7% of float32 values:

* both dtypes: :math:`y = \\mathrm{vrsqrt14}(x)` (architecturally defined, 14 bits),
  :math:`h = y/2`, :math:`s = yx`;
* float64 first takes a Newton step: :math:`e = \\mathrm{fma}(-s, h, 1/2)`,
  :math:`s \\leftarrow \\mathrm{fma}(e, s, s)`, :math:`h \\leftarrow \\mathrm{fma}(e, h, h)`;
* result :math:`\\mathrm{fma}(\\mathrm{fma}(-s, s, x), h, s)`, where :math:`y > 2^{39}`
  (float64: :math:`2^{458}`; subnormal :math:`x`) with the residual's terms scaled:
  :math:`x 2^{78}`, :math:`s 2^{39}`, :math:`h 2^{-78}` (float64: 916, 458, -916);
* ``vfpclass`` 0x5e lanes (zeros, infinities, negatives) take the rare path:
  zeros and :math:`+\\infty` give :math:`x`, negatives and :math:`-\\infty` ``+qNaN``;
  NaN goes through the arithmetic (:math:`x` quieted).

  Checked on the Intel machine: all :math:`2^{32}` float32 patterns and
  :math:`10^8` random float64 plus 1.5 million edge patterns
  (``benchmarks/mkl_sqrt_sweep.py``).

Both run under MKL's rounding mode (MXCSR ``0x1f80``: no flush-to-zero, whatever
the caller set). Another CPU may get yet another kernel, so each process checks
each candidate's C against ``torch.sqrt`` (:func:`emulation`) before a loop uses
it, and otherwise calls MKL.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from typing import TypeVar, cast

import torch

from adaptim.torch import _native

T = TypeVar("T")


def _on_cpu(check: Callable[[torch.dtype], T]) -> Callable[[torch.dtype], T]:
    """Run a one-time check with the CPU as default device: its probe tensors go to the C
    root by address, whatever device the caller made the default (``torch.device("cuda")``)."""

    @functools.wraps(check)
    def on_cpu(dtype: torch.dtype) -> T:
        with torch.device("cpu"):
            return check(dtype)

    return on_cpu


#: ATen's VML mode (``VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE``).
VML_MODE = 0x2 | 0x140000 | 0x100


@functools.cache
@_on_cpu
def vml_sqrt(dtype: torch.dtype) -> int | None:
    """The address of MKL's square root that ``torch.sqrt`` calls for ``dtype``, or ``None``.

    Checked once per process against ``torch.sqrt`` on values across the range
    (subnormals, zeros, infinities, NaN, several lengths): a torch built without
    MKL, or one whose ``sqrt`` is another kernel, gives ``None``.
    """
    name = {torch.float32: "vmsSqrt", torch.float64: "vmdSqrt"}.get(dtype)
    try:
        library = ctypes.CDLL(
            os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
        )
        function = getattr(library, name or "")
    except (OSError, AttributeError):
        return None
    function.restype = None
    function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong]
    values = _probe_values(dtype, 1 << 12)
    expected = torch.sqrt(values)
    for length in (values.numel(), 1, 7, 33, 256):
        got = torch.empty(length, dtype=dtype)
        function(length, values.data_ptr(), got.data_ptr(), VML_MODE)
        if not _same_bits(got, expected[:length]):
            return None
    address = ctypes.cast(function, ctypes.c_void_p).value
    return int(address) if address else None


_FLOAT = """
static inline __m256 mkl_sqrt_8(const __m256 x) {
  const __m256 half = _mm256_set1_ps(0.5f);
  const __m256 y = _mm256_rsqrt_ps(x);
  const __m256 s = _mm256_mul_ps(x, y), h = _mm256_mul_ps(y, half);
  const __m256 e = _mm256_sub_ps(half, _mm256_mul_ps(s, h));
  const __m256 s1 = _mm256_add_ps(_mm256_mul_ps(s, e), s);
  const __m256 h1 = _mm256_add_ps(_mm256_mul_ps(h, e), h);
  const __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(s1, s1));
  const __m256 root = _mm256_add_ps(_mm256_mul_ps(r, h1), s1);
  /* MKL's rare lanes: (bits + 0x7f800000) > 0xfefff000 as signed: not a positive normal, or the top 4096 */
  const __m256i bits = _mm256_castps_si256(x);
  const __m256i rare = _mm256_cmpgt_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7f800000)),
                                          _mm256_set1_epi32((int)0xfefff000u));
  if (__builtin_expect(_mm256_testz_si256(rare, rare), 1)) return root;
  const __m256 exact = _mm256_blendv_ps(root, _mm256_sqrt_ps(x), _mm256_castsi256_ps(rare));
  const __m256 negative = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
  return _mm256_blendv_ps(exact, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)), negative);
}
#define MKL_SQRT_LANES 8
#define MKL_SQRT_V __m256
#define MKL_SQRT_LOAD _mm256_loadu_ps
#define MKL_SQRT_STORE _mm256_storeu_ps
#define MKL_SQRT_KERNEL mkl_sqrt_8
"""

#: Float32 on AVX-512 (F and DQ): ``mkl_sqrt_16(__m512)``, the same ``rsqrtps`` (two 8-lane
#: halves: AVX-512's ``rsqrt14`` is another table) and the same products and sums lane by
#: lane as ``mkl_sqrt_8``, in half the instructions.
_WIDE = """
#if defined(__AVX512F__) && defined(__AVX512DQ__)
static inline __m512 mkl_sqrt_16(const __m512 x) {
  const __m512 half = _mm512_set1_ps(0.5f);
  const __m256 y0 = _mm256_rsqrt_ps(_mm512_castps512_ps256(x));
  const __m256 y1 = _mm256_rsqrt_ps(_mm512_extractf32x8_ps(x, 1));
  const __m512 y = _mm512_insertf32x8(_mm512_castps256_ps512(y0), y1, 1);
  const __m512 s = _mm512_mul_ps(x, y), h = _mm512_mul_ps(y, half);
  const __m512 e = _mm512_sub_ps(half, _mm512_mul_ps(s, h));
  const __m512 s1 = _mm512_add_ps(_mm512_mul_ps(s, e), s);
  const __m512 h1 = _mm512_add_ps(_mm512_mul_ps(h, e), h);
  const __m512 r = _mm512_sub_ps(x, _mm512_mul_ps(s1, s1));
  const __m512 root = _mm512_add_ps(_mm512_mul_ps(r, h1), s1);
  const __m512i bits = _mm512_add_epi32(_mm512_castps_si512(x), _mm512_set1_epi32(0x7f800000));
  const __mmask16 rare = _mm512_cmpgt_epi32_mask(bits, _mm512_set1_epi32((int)0xfefff000u));
  if (__builtin_expect(rare == 0, 1)) return root;
  const __m512 exact = _mm512_mask_sqrt_ps(root, rare, x);
  const __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mask_blend_ps(negative, exact, _mm512_castsi512_ps(_mm512_set1_epi32(0x7fc00000)));
}
#endif
"""

_DOUBLE = """
#define C64(v) _mm256_set1_epi64x((long long)(v))
#define D64(v) _mm256_castsi256_pd(C64(v))
static inline __m256d mkl_sqrt_4(const __m256d x) {
  const __m256i X = _mm256_castpd_si256(x);
  const __m256i odd = _mm256_andnot_si256(X, C64(0x0010000000000000ULL));
  const __m256i top = _mm256_srli_epi64(_mm256_or_si256(_mm256_and_si256(X, C64(0x001fffffe0000000ULL)),
                                                        _mm256_add_epi64(odd, C64(0x07f0000000000000ULL))), 29);
  const __m128 f = _mm256_castps256_ps128(_mm256_castsi256_ps(
      _mm256_permutevar8x32_epi32(top, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6))));
  const __m256d y = _mm256_cvtps_pd(_mm_rsqrt_ps(f));
  const __m256i scale = _mm256_srli_epi64(_mm256_add_epi64(_mm256_sub_epi64(odd, _mm256_and_si256(X, C64(0x7ff0000000000000ULL))),
                                                           C64(0xbfd0000000000000ULL)), 1);
  const __m256d t = _mm256_mul_pd(_mm256_castsi256_pd(scale), y), t2 = _mm256_mul_pd(t, t);
  const __m256d xh = _mm256_and_pd(x, D64(0xfffffffff8000000ULL)), xl = _mm256_sub_pd(x, xh);
  const __m256d e = _mm256_sub_pd(_mm256_sub_pd(_mm256_set1_pd(1.0), _mm256_mul_pd(xh, t2)), _mm256_mul_pd(xl, t2));
  __m256d p = _mm256_add_pd(_mm256_mul_pd(e, D64(0x3fd1800032338cbbULL)), D64(0x3fd40000b13001d9ULL));
  p = _mm256_add_pd(_mm256_mul_pd(p, e), D64(0x3fd80000000000f6ULL));
  p = _mm256_add_pd(_mm256_mul_pd(p, e), D64(0x3fdffffffffffe71ULL));
  p = _mm256_mul_pd(p, e);
  const __m256d root = _mm256_add_pd(_mm256_mul_pd(xh, t),
                                     _mm256_add_pd(_mm256_mul_pd(xl, t), _mm256_mul_pd(_mm256_mul_pd(p, t), x)));
  /* MKL's rare lanes: (high word + 0x7ff00000) > 0xffbfffff as signed */
  const __m256i high = _mm256_add_epi32(_mm256_srli_epi64(X, 32), _mm256_set1_epi32(0x7ff00000));
  const __m256i rare = _mm256_shuffle_epi32(_mm256_cmpgt_epi32(high, _mm256_set1_epi32((int)0xffbfffffu)), 0xA0);
  if (__builtin_expect(_mm256_testz_si256(rare, rare), 1)) return root;
  const __m256d exact = _mm256_blendv_pd(root, _mm256_sqrt_pd(x), _mm256_castsi256_pd(rare));
  const __m256d negative = _mm256_cmp_pd(x, _mm256_setzero_pd(), _CMP_LT_OQ);
  return _mm256_blendv_pd(exact, D64(0x7ff8000000000000ULL), negative);
}
#define MKL_SQRT_LANES 4
#define MKL_SQRT_V __m256d
#define MKL_SQRT_LOAD _mm256_loadu_pd
#define MKL_SQRT_STORE _mm256_storeu_pd
#define MKL_SQRT_KERNEL mkl_sqrt_4
"""


def _fma_kernel(name: str, width: int, double: bool) -> str:
    """MKL's ``Z0HAynn`` kernel (AVX-512: ``vrsqrt14`` and FMA) as ``name(V)`` on ``width``-bit
    vectors (256 needs AVX-512VL: ``vrsqrt14`` is one table at every width)."""
    mm, p = f"_mm{width}", "pd" if double else "ps"
    v = f"__m{width}{'d' if double else ''}"
    mask = f"__mmask{max(8, width // (64 if double else 32))}"  # (no __mmask4)
    # 2^458, 2^916, 2^-916 (float64) / 2^39, 2^78, 2^-78 (float32): rescales tiny x (large y)
    big, up, down = (458, 916, -916) if double else (39, 78, -78)
    newton = (
        # float64: a Newton step on (s, h) first: e = 1/2 - sh, s += se, h += he
        f"  const {v} e = {mm}_fnmadd_{p}(s0, h0, half);\n"
        f"  const {v} s = {mm}_fmadd_{p}(e, s0, s0), h = {mm}_fmadd_{p}(e, h0, h0);\n"
        if double
        else f"  const {v} s = s0, h = h0;\n"
    )
    return f"""
static inline {v} {name}(const {v} x) {{
  const {v} half = {mm}_set1_{p}(0.5);
  const {v} y = {mm}_rsqrt14_{p}(x);
  const {v} h0 = {mm}_mul_{p}(y, half), s0 = {mm}_mul_{p}(y, x);
{newton}  {v} root;
  const {mask} tiny = {mm}_cmp_{p}_mask({mm}_set1_{p}(0x1p{big}), y, _CMP_LT_OS);
  if (__builtin_expect(tiny == 0, 1)) {{
    root = {mm}_fmadd_{p}({mm}_fnmadd_{p}(s, s, x), h, s);
  }} else {{  /* (subnormal x: the residual taken on values scaled up) */
    const {v} xs = {mm}_mask_mul_{p}(x, tiny, x, {mm}_set1_{p}(0x1p{up}));
    const {v} ss = {mm}_mask_mul_{p}(s, tiny, s, {mm}_set1_{p}(0x1p{big}));
    const {v} hs = {mm}_mask_mul_{p}(h, tiny, h, {mm}_set1_{p}(0x1p{down}));
    root = {mm}_fmadd_{p}({mm}_fnmadd_{p}(ss, ss, xs), hs, s);
  }}
  /* MKL's rare lanes (vfpclass 0x5e): zeros and +inf give x, negatives and -inf +qNaN; NaN
     went through the arithmetic above (x quieted) */
  const {mask} rare = {mm}_fpclass_{p}_mask(x, 0x5e);
  if (__builtin_expect(rare == 0, 1)) return root;
  const {mask} negative = {mm}_fpclass_{p}_mask(x, 0x50);
  const {v} nan = {mm}_set1_{p}(__builtin_nan{"" if double else "f"}(""));  /* (+qNaN) */
  return {mm}_mask_blend_{p}(negative, {mm}_mask_blend_{p}(rare, root, x), nan);
}}
"""


#: MKL's ``Z0HAynn`` kernels (Intel CPUs with AVX-512): ``mkl_sqrt_16``/``mkl_sqrt_8`` (float32)
#: or ``mkl_sqrt_8d``/``mkl_sqrt_4`` (float64), the tile on the 512-bit one.
_FMA = {
    torch.float32: _fma_kernel("mkl_sqrt_16", 512, False)
    + _fma_kernel("mkl_sqrt_8", 256, False)
    + "#define MKL_SQRT_LANES 16\n#define MKL_SQRT_V __m512\n#define MKL_SQRT_LOAD _mm512_loadu_ps\n"
    "#define MKL_SQRT_STORE _mm512_storeu_ps\n#define MKL_SQRT_KERNEL mkl_sqrt_16\n",
    torch.float64: _fma_kernel("mkl_sqrt_8d", 512, True)
    + _fma_kernel("mkl_sqrt_4", 256, True)
    + "#define MKL_SQRT_LANES 8\n#define MKL_SQRT_V __m512d\n#define MKL_SQRT_LOAD _mm512_loadu_pd\n"
    "#define MKL_SQRT_STORE _mm512_storeu_pd\n#define MKL_SQRT_KERNEL mkl_sqrt_8d\n",
}

_TILE = """
/* MKL's square root of q[0..n) into r (``T`` is the element type): its MXCSR (0x1f80) for the call. */
static void mkl_sqrt_tile(int64_t n, const T* q, T* r) {
  const unsigned int csr = _mm_getcsr(), mode = (csr & 0x3fu) | 0x1f80u;
  if (csr != mode) _mm_setcsr(mode);
  int64_t k = 0;
  for (; k + MKL_SQRT_LANES <= n; k += MKL_SQRT_LANES) MKL_SQRT_STORE(r + k, MKL_SQRT_KERNEL(MKL_SQRT_LOAD(q + k)));
  if (k < n) {
    T in[MKL_SQRT_LANES], out[MKL_SQRT_LANES];
    for (int u = 0; u < MKL_SQRT_LANES; ++u) in[u] = k + u < n ? q[k + u] : (T)1;
    MKL_SQRT_STORE(out, MKL_SQRT_KERNEL(MKL_SQRT_LOAD(in)));
    for (int u = 0; k + u < n; ++u) r[k + u] = out[u];
  }
  if (csr != mode) _mm_setcsr(csr);
}
"""


#: MKL's kernels that the C reproduces, in the order :func:`emulation` tries them.
KERNELS = ("EXHAynn", "Z0HAynn")


def kernel_source(dtype: torch.dtype, kernel: str | None = None) -> str:
    """C defining MKL's root of a vector: ``mkl_sqrt_8(__m256)`` and ``mkl_sqrt_16(__m512)``
    (the latter with AVX-512), or ``mkl_sqrt_4(__m256d)``; needs AVX2 (``Z0HAynn``: AVX-512
    F, DQ and VL).

    ``kernel`` (one of :data:`KERNELS`): the one this process found MKL to run
    (:func:`emulation`) unless given, ``EXHAynn`` where none matched. It takes the caller's
    MXCSR: MKL's bits under ``0x1f80`` (:data:`_TILE` sets it).
    """
    kernel = kernel or emulation(dtype) or KERNELS[0]
    if kernel == "Z0HAynn":
        return (
            "#include <immintrin.h>\n"
            "#if !defined(__AVX512F__) || !defined(__AVX512DQ__) || !defined(__AVX512VL__)\n"
            '#error "MKL\'s Z0HAynn root needs AVX-512 F, DQ and VL"\n#endif\n' + _FMA[dtype]
        )
    kernel_text = _FLOAT + _WIDE if dtype == torch.float32 else _DOUBLE
    header = (
        '#include <immintrin.h>\n#ifndef __AVX2__\n#error "the square root needs AVX2"\n#endif\n'
    )
    return header + kernel_text


def tile_sqrt_source(dtype: torch.dtype, kernel: str | None = None) -> str:
    """C defining ``mkl_sqrt_tile(n, q, r)`` for ``dtype`` (after ``typedef ... T``); needs AVX2."""
    return kernel_source(dtype, kernel) + _TILE


def _probe_values(dtype: torch.dtype, count: int) -> torch.Tensor:
    """Values across the range: random bit patterns, ``[0, 10)``, subnormals, the top, specials."""
    generator = torch.Generator().manual_seed(0)
    info = torch.finfo(dtype)
    integer = torch.int32 if dtype == torch.float32 else torch.int64
    rare = count // 8  # (bit patterns: half negative or NaN, MKL's slow path)
    bits = torch.randint(-(2**31), 2**31, (rare,), generator=generator, dtype=torch.int64)
    if dtype == torch.float64:
        low = torch.randint(-(2**31), 2**31, (rare,), generator=generator, dtype=torch.int64)
        bits = (bits << 32) ^ low
    patterns = bits.to(integer).view(dtype)
    return torch.cat(
        [
            patterns,
            patterns.abs(),
            torch.rand(count, generator=generator, dtype=dtype) * 10,
            torch.rand(257, generator=generator, dtype=dtype).exp2_() * info.tiny,
            torch.rand(257, generator=generator, dtype=dtype) * info.max,
            torch.tensor(
                [0.0, -0.0, float("inf"), -float("inf"), info.tiny / 4, -1.0, float("nan")],
                dtype=dtype,
            ),
        ]
    )


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    integer = torch.int32 if a.dtype == torch.float32 else torch.int64
    return torch.equal(a.contiguous().view(integer), b.contiguous().view(integer))


@functools.cache
def _compiled(dtype: torch.dtype, kernel: str) -> Callable[[int, int, int], None] | None:
    if dtype not in (torch.float32, torch.float64):
        return None
    ctype = "float" if dtype == torch.float32 else "double"
    source = (
        f"#include <stdint.h>\ntypedef {ctype} T;\n{tile_sqrt_source(dtype, kernel)}"
        "void adaptim_sqrt(int64_t n, const T* q, T* r) { mkl_sqrt_tile(n, q, r); }\n"
    )
    try:
        function = ctypes.CDLL(str(_native.build_library(source, "sqrt"))).adaptim_sqrt
    except (_native.NativeUnavailable, OSError):
        return None
    function.restype = None
    function.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    return cast("Callable[[int, int, int], None]", function)


def tile_sqrt(
    dtype: torch.dtype, kernel: str | None = None
) -> Callable[[int, int, int], None] | None:
    """:func:`tile_sqrt_source` compiled on its own, ``f(n, q, r)`` on data pointers (``None``:
    no compiler or not the instructions ``kernel`` needs; ``kernel`` as :func:`kernel_source`'s)."""
    return _compiled(dtype, kernel or emulation(dtype) or KERNELS[0])


def matches(dtype: torch.dtype, kernel: str) -> bool:
    """Whether ``kernel``'s C gives ``torch.sqrt``'s bits here (:func:`emulation`'s check).

    The check (a few ms): random bit patterns across the range, values of
    :math:`[0, 10)`, subnormals, the top binade and the special values, and
    for float32 262,144 values of :math:`[1, 4)` (mantissas with both
    exponent parities, what ``rsqrtps`` reads), also at ragged lengths. Any
    other algorithm differs from this one on a share of values large enough
    for a sample to tell them apart (``EXHAynn`` differs from the correctly
    rounded root on 17% of float32 values, ``Z0HAynn`` on 0.7%, and from each
    other on about as many). ``False`` without a compiler, the instructions or MKL.
    """
    with torch.device("cpu"):
        function = _compiled(dtype, kernel)
        if function is None or vml_sqrt(dtype) is None:
            return False
        checks = [_probe_values(dtype, 1 << 15)]
        if dtype == torch.float32:  # 262,144 values of [1, 4): every 64th, each low-bit residue
            steps = torch.arange(1 << 18, dtype=torch.int32)
            checks.append((0x3F800000 + steps * 64 + steps % 64).view(dtype))
        for values in checks:
            expected = torch.sqrt(values)
            got = torch.empty_like(values)
            function(values.numel(), values.data_ptr(), got.data_ptr())
            if not _same_bits(got, expected):
                return False
            for length in (1, 3, 5, 13, 17):  # (ragged ends)
                function(length, values.data_ptr(), got.data_ptr())
                if not _same_bits(got[:length], expected[:length]):
                    return False
        return True


@functools.cache
@_on_cpu
def emulation(dtype: torch.dtype) -> str | None:
    """The one of :data:`KERNELS` whose C gives ``torch.sqrt``'s bits in this process, or
    ``None`` (checked once per process by :func:`matches`)."""
    return next((kernel for kernel in KERNELS if matches(dtype, kernel)), None)


@functools.cache
def emulated(dtype: torch.dtype) -> bool:
    """Whether :func:`tile_sqrt_source`'s C gives ``torch.sqrt``'s bits here (:func:`emulation`)."""
    return emulation(dtype) is not None


#: Per emulated kernel, the group size (elements) below which the default native loop of a
#: group of ``AUTO_NATIVE_MIN_NUMEL`` or more elements takes the exact root too (smaller
#: groups take it wherever it is emulated): where it costs nothing against ``vsqrtps``.
#: ``Z0HAynn`` (Intel Xeon, Emerald Rapids): MKL's root is ``vrsqrt14`` and two FMAs, off the
#: divider that ``vsqrtps`` and the loop's division share, so in cache the exact loop is the
#: faster one, out of the core's caches it costs a few percent. Exact / rounded, one thread,
#: loaded (load average 1-5), default constructor and fresh gradients
#: (``benchmarks/exact_root_speed.py``): 235k elements 0.81-1.07, medians 0.93-0.96 over
#: thirteen rules in three runs; 1.5M 0.92-1.05 (median 1.02); 16M 1.01-1.06 (Adagrad,
#: RMSprop 1.05-1.06); 4M in 1,000 tensors 1.00-1.05; two threads 1.5M 0.91-1.05, 16M
#: 0.99-1.05 (235k: medians 1.00-1.03 in three runs under a load of 3-5 on two cores, not
#: told from noise). The loops alone on the same buffers: float32 500k 0.90-1.00, 1M 0.94-1.02,
#: 1.5M-16M 1.01-1.12; float64 235k-500k 0.59-0.76. So up to 512k.
#: ``EXHAynn`` (AMD Zen 4): twelve more multiplies and adds on the pipes the loop fills
#: (16M: 0.86-0.96x of torch's fused kernels, against 1.03-1.16x with ``vsqrtps``): never.
EXACT_LOOP_FREE_BELOW = {"EXHAynn": 0, "Z0HAynn": 1 << 19}


def exact_loop_free(dtype: torch.dtype, numel: int) -> bool:
    """Whether the exact loop costs nothing against the rounded one on a group of ``numel``
    elements here (:data:`EXACT_LOOP_FREE_BELOW` of :func:`emulation`'s kernel)."""
    if numel >= max(EXACT_LOOP_FREE_BELOW.values()):  # (no check of the root for them)
        return False
    kernel = emulation(dtype) if dtype in (torch.float32, torch.float64) else None
    return kernel is not None and numel < EXACT_LOOP_FREE_BELOW.get(kernel, 0)
