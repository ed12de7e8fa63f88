"""The 8-bit code in C for the native loop (:mod:`._lowmem_native`): tables, decoder, encoder.

Decoding is a look-up, ``code[q]·a`` (in registers where AVX-512 VBMI
allows, :func:`decoder`). Encoding must give the nearest code
exactly as :func:`._lowmem.quantize_blockwise` does (the number of midpoints
between code points, *thresholds*, that lie below ``x/a``) without a binary
search, whose eight dependent look-ups per value cost more than the whole
update: the float's top bits pick a bucket whose table entry holds the count
below it and the low bits of the one threshold that may lie inside
(:func:`bucket_table`). With AVX-512 a full block is encoded without that
gather (:func:`segment_encoder`): the thresholds of each decade of the code
are an even grid, so one multiply-add gives the count, and the few blocks
with a value too close to a threshold to be sure fall back to the buckets.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from adaptim.torch import _lowmem


def float_table(name: str, values: torch.Tensor) -> str:
    """A static float table, each value as an exact hexadecimal literal."""
    items = ", ".join(
        "INFINITY" if math.isinf(v) else f"{float(v).hex()}f" for v in values.tolist()
    )
    return f"static const float {name}[{values.numel()}] = {{{items}}};"


#: Encoding buckets: ``|x|`` by its exponent and top 7 mantissa bits (a bucket is at
#: most 0.8% of its value wide, under the 1.4% between neighbouring thresholds, so it
#: holds at most one), from 2⁻²³ (below every nonzero threshold) up to 1: 12 KiB of
#: table per code, which stays in the L1 cache beside the streamed tensors.
_LOW_EXPONENT = 127 - 23
_BUCKET_SHIFT = 16
_FIRST = _LOW_EXPONENT << 7
_BUCKETS = (0x3F800000 >> _BUCKET_SHIFT) - _FIRST + 1
#: No threshold inside a bucket: a value of the low 16 bits no ``x`` reaches.
_NONE = 1 << 16


def positive_thresholds(signed: bool) -> np.ndarray:
    """The thresholds above 0; the signed code's negative ones are the mirror of all but the last."""
    thresholds = _lowmem._thresholds(signed).numpy()
    positive = thresholds[thresholds > 0]
    if signed:  # 127 below 0, 128 above (the last lies between the largest point and 1)
        assert np.array_equal(-thresholds[:127][::-1], positive[:127]) and positive.size == 128
    return positive


def bucket_table(signed: bool) -> np.ndarray:
    """Per bucket of magnitudes: the positive thresholds below it, and the low bits of the one inside.

    A bucket holds the magnitudes ``u`` whose top 16 bits (sign cleared) are
    the same, ``[lo, hi)``. ``base`` counts the positive thresholds below
    ``lo``; at most one, ``t``, lies inside, with the bucket's top bits, so
    comparing ``u`` with ``t`` is comparing their low 16 bits. An entry is
    ``base | low(t) << 8``, with ``low(t) = 2¹⁶`` (above any) where none lies
    inside. Then, with ``lt = base + (low(u) > low(t))`` thresholds below
    ``u`` and ``le = base + (low(u) ≥ low(t))`` at or below it, the nearest
    code of ``x`` is ``lt`` (unsigned code, ``x ≥ 0``), ``127 + lt``
    (signed, ``x ≥ 0``: the 127 negative thresholds lie below), or
    ``127 - min(le, 127)`` (signed, ``x = -u``: the negative thresholds below
    ``-u`` are the mirrors of those at or above ``u``). Bucket 0 reaches down
    to 0 and the last up past 1: neither holds a threshold.
    """
    positive = positive_thresholds(signed)
    starts = ((np.arange(_BUCKETS, dtype=np.int64) + _FIRST) << _BUCKET_SHIFT).astype(np.int32)
    lo = starts.view(np.float32).copy()
    lo[0] = 0.0
    hi = np.append(lo[1:], np.float32(2.0))
    base = np.searchsorted(positive, lo, side="left")
    inside = np.searchsorted(positive, hi, side="left") - base
    assert int(inside.max()) <= 1 and inside[0] == 0 and inside[-1] == 0
    low = (np.append(positive, np.float32(1.0))[base].view(np.int32) & 0xFFFF).astype(np.int64)
    return (base + (np.where(inside == 1, low, _NONE) << 8)).astype(np.int32)


def byte_planes(name: str, values: torch.Tensor) -> str:
    """The 256 floats of a code as four planes of 256 bytes (byte ``k`` of every float, then ``k+1``).

    The AVX-512 decoder looks a code up in registers, one byte plane at a
    time (:func:`decoder`).
    """
    planes = values.numpy().astype("<f4").view(np.uint8).reshape(-1, 4).T.reshape(-1)
    items = ", ".join(map(str, planes.tolist()))
    table = f"static const uint8_t {name}[1024] __attribute__((aligned(64))) = {{{items}}};"
    return f"#ifdef ADAPTIM_VBMI\n{table}\n#endif"


#: Where the decoder's interleaving of byte planes puts element ``e`` of 64: the
#: unpack instructions work within 128-bit lanes, so the codes are first put in
#: the order that makes the four results' floats come out in memory order.
DECODE_ORDER = [16 * (p % 16 // 4) + 4 * (p // 16) + p % 4 for p in range(64)]


def decoder(suffix: str) -> list[str]:
    """``decode_<suffix>``: ``code[q]·a`` for ``m`` codes into ``out``.

    A gather of 16 floats costs about as much as the whole update of 16
    values, so with AVX-512 VBMI the 256-float table is held in registers as
    four byte planes (:func:`byte_planes`): for 64 codes at once, each plane's
    byte is one ``vpermi2b`` per half of the table and a blend by the code's
    top bit, and unpacking the four bytes gives the floats, exactly the
    table's. Elsewhere (and for a block's tail) it is the plain look-up.
    """
    planes = f"PLANES_{suffix}"
    lines = [
        f"static inline void decode_{suffix}(const uint8_t* restrict q, int64_t m, float a,",
        "                                  float* restrict out) {",
        "  int64_t j = 0;",
        "#ifdef ADAPTIM_VBMI",
        "  if (m >= 64) {",
        "    const __m512i order = _mm512_loadu_si512(DECODE_ORDER);",
        "    const __m512 scale = _mm512_set1_ps(a);",
        "    __m512i p[16];",
        f"    for (int k = 0; k < 16; ++k) p[k] = _mm512_load_si512({planes} + 64 * k);",
        "    for (; j + 64 <= m; j += 64) {",
        "      const __m512i c = _mm512_permutexvar_epi8(order, _mm512_loadu_si512(q + j));",
        "      const __mmask64 high = _mm512_movepi8_mask(c);",
        "      __m512i b[4];",
        "      for (int k = 0; k < 4; ++k)",
        "        b[k] = _mm512_mask_blend_epi8(high,",
        "                 _mm512_permutex2var_epi8(p[4 * k], c, p[4 * k + 1]),",
        "                 _mm512_permutex2var_epi8(p[4 * k + 2], c, p[4 * k + 3]));",
        "      const __m512i lo01 = _mm512_unpacklo_epi8(b[0], b[1]);",
        "      const __m512i hi01 = _mm512_unpackhi_epi8(b[0], b[1]);",
        "      const __m512i lo23 = _mm512_unpacklo_epi8(b[2], b[3]);",
        "      const __m512i hi23 = _mm512_unpackhi_epi8(b[2], b[3]);",
        "      const __m512i w[4] = {_mm512_unpacklo_epi16(lo01, lo23),"
        " _mm512_unpackhi_epi16(lo01, lo23),",
        "                            _mm512_unpacklo_epi16(hi01, hi23),"
        " _mm512_unpackhi_epi16(hi01, hi23)};",
        "      for (int k = 0; k < 4; ++k)",
        "        _mm512_storeu_ps(out + j + 16 * k,"
        " _mm512_mul_ps(_mm512_castsi512_ps(w[k]), scale));",
        "    }",
        "  }",
        "#endif",
        f"  for (; j < m; ++j) out[j] = CODE_{suffix}[q[j]] * a;",
        "}",
    ]
    return lines


#: The in-register decoder and encoder: AVX-512 with its byte permutations (VBMI).
VBMI_HEADER = [
    "#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) \\",
    "    && defined(__AVX512VBMI__)",
    "#define ADAPTIM_VBMI 1",
    "#include <immintrin.h>",
    "static const uint8_t DECODE_ORDER[64] __attribute__((aligned(64))) = {"
    + ", ".join(map(str, DECODE_ORDER))
    + "};",
    "#endif",
]


def int_table(name: str, values: np.ndarray) -> str:
    return (
        f"static const int32_t {name}[{values.size}] = {{{', '.join(map(str, values.tolist()))}}};"
    )


def quantizer(suffix: str, signed: bool) -> list[str]:
    """``quantize_<suffix>``: a block's new maximum and its codes (nearest, as the reference).

    ``top`` is the largest magnitude's bits, sign cleared (the update loop
    finds it as it writes the block: the largest such integer is the largest
    float, a vectorised reduction without branches). ``x/a`` lies in [-1, 1]
    (a is the largest magnitude), so no clamp is needed.
    """
    if signed:
        position = [
            "      const int32_t le = (e & 255) + (low >= t), m = le < 127 ? le : 127;",
            "      const int32_t pos = 127 + lt - neg * (lt + m);",
        ]
    else:  # (-0.0 is the only negative value a non-negative entry can hold: code 0)
        position = [
            "      int32_t pos = lt * (neg ^ 1);",
            "      pos += (x > 0.0f) & (pos == 0);  /* never 0.0 */",
        ]
    return [
        f"static inline void quantize_{suffix}(const float* restrict v, int64_t m, uint32_t top,",
        "                                    uint8_t* restrict q, float* restrict absmax) {",
        "  float a; memcpy(&a, &top, 4);",
        "  *absmax = a;",
        "  const float d = a > 0.0f ? a : 1.0f;",
        "#ifdef ADAPTIM_VBMI",
        f"  if (m == QBLOCK && !encode_{suffix}(v, d, q)) return;",
        "#endif",
        "  #pragma omp simd",
        "  for (int64_t j = 0; j < m; ++j) {",
        "      const float x = v[j] / d;",
        "      uint32_t bits; memcpy(&bits, &x, 4);",
        f"      int32_t b = (int32_t)((bits & 0x7FFFFFFFu) >> {_BUCKET_SHIFT}) - {_FIRST};",
        f"      b = b < 0 ? 0 : (b > {_BUCKETS - 1} ? {_BUCKETS - 1} : b);",
        "      const int32_t neg = (int32_t)(bits >> 31), low = (int32_t)(bits & 0xFFFFu);",
        f"      const int32_t e = BUCKET_{suffix}[b], t = e >> 8;",
        "      const int32_t lt = (e & 255) + (low > t);",
        *position,
        "      q[j] = (uint8_t)pos;",
        "  }",
        "}",
    ]


#: The in-register encoder (:func:`segment_tables`): the binades of ``|x/a|`` from 2⁻²⁵
#: up (smaller values are counted in that one), indexed by the exponent's low 5 bits,
#: and how close (in steps between thresholds) a value may come to an interior
#: threshold before its block is encoded again with the bucket table.
_LOW_BINADE = 127 - 25
_NEAR = 2.0**-13


def _group(value: float) -> int:
    """0 for the code 0, 1 + k for decade k (values in 10^(k-7)..10^(k-6)), 8 for 1.0."""
    if value == 0.0:
        return 0
    if value == 1.0:
        return 8
    return int(np.floor(np.log10(value))) + 8


def segment_tables(signed: bool) -> dict[str, np.ndarray]:
    """The in-register encoder's tables, checked to give the bucket table's count.

    The positive thresholds fall in 9 *segments*: below the first code,
    each decade's, and above the last. Between two of them lies one
    *boundary* threshold, compared exactly: a float's binade holds at most one
    (they are about 10x apart), so ``SEG[binade] + (|y| > TB[binade])`` is the
    segment. Inside decade ``k`` with ``n`` codes the thresholds are the even
    grid ``10^(k-6)·(0.1 + 0.9·j/n)`` up to float32 rounding, so
    ``κ = |y|·A - B`` with ``A = n/(0.9·10^(k-6))``, ``B = n/9 - base`` is
    ``base + j`` at the ``j``-th (``base``: the thresholds below the
    segment), and ``min(⌊κ⌋, TOP)``, ``TOP = base + n - 1``, counts the
    thresholds below ``|y|``. It is exact wherever ``κ`` is more than :data:`_NEAR` from an
    integer; nearer (about 1 value in 4,000) the caller encodes the block
    with the bucket table instead. The check below proves it for every
    threshold: ``κ`` (computed in float64, then rounded to float32 as the
    fused multiply-add does) of the threshold itself stays under ``j + δ``
    and that of the next float above it over ``j - δ``; ``κ`` is monotone,
    so every value farther than ``δ`` gets ``⌊κ⌋`` right.
    """
    code = _lowmem.dynamic_code(signed).numpy()
    points = code[code >= 0]
    thresholds = positive_thresholds(signed)
    groups = np.array([_group(float(x)) for x in points])
    assert np.array_equal(np.unique(groups), np.arange(9)) and np.all(np.diff(groups) >= 0)
    boundary = groups[:-1] != groups[1:]
    boundaries = thresholds[boundary]
    a = np.zeros(16, np.float32)
    b = np.zeros(16, np.float32)
    top = np.zeros(16, np.int32)
    for segment in range(9):
        below = np.flatnonzero(boundary)[:segment]
        base = below[-1] + 1 if below.size else 0
        n = int((groups == segment).sum())
        # (segments without interior thresholds: κ = base + 1/2)
        b[segment], top[segment] = -(base + 0.5), base
        if segment in (0, 8) or n == 1:
            continue
        decade = 10.0 ** (segment - 7)
        a[segment], b[segment], top[segment] = n / (0.9 * decade), n / 9 - base, base + n - 1
        inner = thresholds[(groups[:-1] == segment) & (groups[1:] == segment)]
        assert inner.size == n - 1
        # (above the boundary below, κ > base: truncation gives base with no clamp)
        first = np.nextafter(boundaries[segment - 1], np.float32(2.0)).astype(np.float64)
        assert first * float(a[segment]) - float(b[segment]) > base
        above = np.nextafter(inner, np.float32(2.0))
        for values, side in ((inner, 1.0), (above, -1.0)):
            kappa = (values.astype(np.float64) * float(a[segment]) - float(b[segment])).astype(
                np.float32
            )
            j = base + np.arange(1, n, dtype=np.float64)
            assert np.all(side * (kappa - j) < _NEAR - 2.0**-16), (signed, segment)
    seg = np.zeros(32, np.int32)
    tb = np.full(32, 0x7F800000, np.int32)  # (no boundary in the binade: +inf)
    for exponent in range(_LOW_BINADE, 128):
        start = np.array([exponent << 23], np.int32).view(np.float32)[0]
        inside = boundaries[(boundaries >= start) & (boundaries < 2 * start)]
        assert inside.size <= 1 and (exponent > _LOW_BINADE or boundaries[0] >= 2 * start)
        seg[exponent % 32] = int((boundaries < start).sum())
        if inside.size:
            tb[exponent % 32] = inside.view(np.int32)[0]
    assert 128 - _LOW_BINADE <= 32
    return {"SEG": seg, "TB": tb, "A": a, "B": b, "TOP": top}


def _int_list(values: np.ndarray) -> str:
    return ", ".join(map(str, values.tolist()))


def segment_encoder(suffix: str, signed: bool) -> list[str]:
    """``encode_<suffix>``: a full block's codes by :func:`segment_tables`, in registers.

    The bucket table's gather of 16 entries costs more than the rest of the
    encoding; here every look-up is a permutation of a register (32 entries
    by binade, 16 by segment). Returns nonzero when a value came within
    :data:`_NEAR` of an interior threshold: the caller then encodes the block
    with the bucket table (about 6% of blocks).
    """
    tables = segment_tables(signed)
    name = f"SEGMENT_{suffix}"
    if signed:  # (x = -u: 127 - min(le, 127); le = lt, + 1 where u is a boundary itself)
        position = [
            "    const __m512i le = _mm512_mask_add_epi32(lt, _mm512_cmpeq_epi32_mask(u, tb), lt, one);",
            "    const __m512i pos = _mm512_mask_sub_epi32(_mm512_add_epi32(lt, c127),",
            "        _mm512_movepi32_mask(bits), c127, _mm512_min_epi32(le, c127));",
        ]
    else:  # (-0.0: code 0; a positive value: never code 0)
        position = [
            "    __m512i pos = _mm512_mask_mov_epi32(lt, _mm512_movepi32_mask(bits), zero);",
            "    pos = _mm512_mask_mov_epi32(pos, _mm512_cmpgt_epi32_mask(bits, zero)",
            "        & _mm512_cmpeq_epi32_mask(pos, zero), one);",
        ]
    return [
        "#ifdef ADAPTIM_VBMI",
        f"static const int32_t {name}_SEG[32] __attribute__((aligned(64))) = "
        f"{{{_int_list(tables['SEG'])}}};",
        f"static const int32_t {name}_TB[32] __attribute__((aligned(64))) = "
        f"{{{_int_list(tables['TB'])}}};",
        f"static const int32_t {name}_TOP[16] __attribute__((aligned(64))) = "
        f"{{{_int_list(tables['TOP'])}}};",
        f"static const uint32_t {name}_A[16] __attribute__((aligned(64))) = "
        f"{{{_int_list(tables['A'].view(np.uint32))}}};",
        f"static const uint32_t {name}_B[16] __attribute__((aligned(64))) = "
        f"{{{_int_list(tables['B'].view(np.uint32))}}};",
        f"static inline int encode_{suffix}(const float* restrict v, float d, uint8_t* restrict q) {{",
        "  const __m512 divisor = _mm512_set1_ps(d);",
        "  const __m512 near = _mm512_set1_ps((float)" + repr(_NEAR) + ");",
        "  const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi32(1);",
        "  const __m512i c127 = _mm512_set1_epi32(127), magnitude = _mm512_set1_epi32(0x7FFFFFFF);",
        f"  const __m512i low_binade = _mm512_set1_epi32({_LOW_BINADE});",
        f"  const __m512i seg_lo = _mm512_load_si512({name}_SEG),"
        f" seg_hi = _mm512_load_si512({name}_SEG + 16);",
        f"  const __m512i tb_lo = _mm512_load_si512({name}_TB),"
        f" tb_hi = _mm512_load_si512({name}_TB + 16);",
        f"  const __m512i top = _mm512_load_si512({name}_TOP);",
        f"  const __m512 a = _mm512_load_ps((const float*){name}_A),"
        f" b = _mm512_load_ps((const float*){name}_B);",
        "  __mmask16 close = 0;",
        "  for (int j = 0; j < QBLOCK; j += 16) {",
        "    const __m512i bits = _mm512_castps_si512(_mm512_div_ps(_mm512_loadu_ps(v + j), divisor));",
        "    const __m512i u = _mm512_and_si512(bits, magnitude);",
        "    const __m512i e = _mm512_max_epu32(_mm512_srli_epi32(u, 23), low_binade);",
        "    const __m512i tb = _mm512_permutex2var_epi32(tb_lo, e, tb_hi);",
        "    __m512i seg = _mm512_permutex2var_epi32(seg_lo, e, seg_hi);",
        "    seg = _mm512_mask_add_epi32(seg, _mm512_cmpgt_epi32_mask(u, tb), seg, one);",
        "    const __m512 kappa = _mm512_fmsub_ps(_mm512_castsi512_ps(u),"
        " _mm512_permutexvar_ps(seg, a), _mm512_permutexvar_ps(seg, b));",
        # (κ minus the nearest integer, in one instruction)
        "    const __m512 fraction = _mm512_reduce_ps(kappa, _MM_FROUND_TO_NEAREST_INT);",
        "    close |= _mm512_cmp_ps_mask(_mm512_abs_ps(fraction), near, _CMP_LT_OQ);",
        "    const __m512i lt = _mm512_min_epi32(_mm512_cvttps_epi32(kappa),"
        " _mm512_permutexvar_epi32(seg, top));",
        *position,
        "    _mm_storeu_si128((__m128i*)(q + j), _mm512_cvtepi32_epi8(pos));",
        "  }",
        "  return close != 0;",
        "}",
        "#endif",
    ]
