"""The 8-bit codes' in-register encoder for the native loop (AVX-512): segments of the code.

Encoding must give the nearest code exactly as
:func:`._lowmem.quantize_blockwise` does: the number of thresholds (midpoints
between code points) below ``x/a``. :mod:`._lowmem_codes` does it with one
look-up in a table of buckets by the float's top bits, a gather per 16
values; here a whole block is encoded without one. The code is piecewise
even: inside each decade its thresholds are an even grid, so the decade
(*segment*, found from the float's binade and one exact comparison) gives a
multiply-add whose integer part is the code (:func:`segment_tables` proves
it for every threshold), and the few blocks with a value too close to a
threshold to be sure go back to the buckets.
"""

from __future__ import annotations

import numpy as np

from adaptim.torch import _lowmem, _lowmem_codes

#: The in-register encoder (:func:`segment_tables`): the binades of ``|x/a|`` from 2⁻²⁵
#: up (smaller values are counted in that one), indexed by the exponent's low 5 bits,
#: and how close (in steps between thresholds) a value may come to an interior
#: threshold before it is encoded again with the bucket table.
_LOW_BINADE = 127 - 25
_NEAR = 2.0**-14


def _group(value: float) -> int:
    """0 for the code 0, 1 + k for decade k (values in 10^(k-7)..10^(k-6)), 8 for 1.0."""
    if value == 0.0:
        return 0
    if value == 1.0:
        return 8
    return int(np.floor(np.log10(value))) + 8


def segment_tables(signed: bool) -> dict[str, np.ndarray]:
    """The in-register encoder's tables, checked to give the bucket table's code.

    The positive thresholds fall in 9 *segments*: below the first code,
    each decade's, and above the last. Between two of them lies one
    *boundary* threshold, compared exactly: a float's binade holds at most one
    (they are about 10x apart), so ``SEG[binade] + (|y| > TB[binade])`` is the
    segment. Inside decade ``k`` with ``n`` codes the thresholds are the even
    grid ``10^(k-6)·(0.1 + 0.9·j/n)`` up to float32 rounding, so
    ``κ = |y|·A - B`` with ``A = n/(0.9·10^(k-6))``, ``B = n/9 - base - o`` is
    ``o + base + j`` at the ``j``-th (``base``: the thresholds below the
    segment; ``o``: 127 for the signed code, whose positive codes start
    there), and ``min(⌊κ⌋, TOP)``, ``TOP = o + base + n - 1``, is the code of
    a positive ``y``. It is exact wherever ``κ`` is more than :data:`_NEAR`
    from an integer; nearer (about 1 value in 8,000) the value is encoded
    with the bucket table instead. The check below proves it for every
    threshold: ``κ`` (computed in float64, then rounded to float32 as the
    fused multiply-add does) of the threshold itself stays under ``j + δ``
    and that of the next float above it over ``j - δ``; ``κ`` is monotone,
    so every value farther than ``δ`` gets ``⌊κ⌋`` right.

    The sign needs no more than this (:func:`segment_encoder`). A negative
    ``y = -u`` of the signed code takes ``127 - min(le, 127)``, ``le`` the
    thresholds at or below ``u``, and ``le`` is ``⌊κ⌋ - 127`` unless ``u``
    is itself a threshold: an interior one is flagged, and so is a boundary
    (checked: at the boundary above a segment ``κ`` is within ``δ`` of an
    integer, or ``le`` is clamped there anyway). So the segments with no
    interior threshold below a boundary get ``κ = o + base + 1/2 + u/(2b)``
    (``b``: that boundary) rather than a constant. For the unsigned code a
    positive value never takes code 0, so the first segment's code is 1.
    """
    code = _lowmem.dynamic_code(signed).numpy()
    points = code[code >= 0]
    thresholds = _lowmem_codes.positive_thresholds(signed)
    groups = np.array([_group(float(x)) for x in points])
    assert np.array_equal(np.unique(groups), np.arange(9)) and np.all(np.diff(groups) >= 0)
    boundary = groups[:-1] != groups[1:]
    boundaries = thresholds[boundary]
    offset = 127 if signed else 0
    a = np.zeros(16, np.float32)
    b = np.zeros(16, np.float32)
    top = np.zeros(16, np.int32)

    def kappa(values: np.ndarray, segment: int) -> np.ndarray:
        exact = values.astype(np.float64) * float(a[segment]) - float(b[segment])
        return exact.astype(np.float32).astype(np.float64)

    # (float64 holds t·A - B exactly, so rounding it to float32 is the fused multiply-add's
    # one rounding; κ of a threshold or its neighbours is measured within 2⁻¹⁶ of j, one
    # float32 step, and 2⁻¹⁶ more is left as slack)
    margin = _NEAR - 2.0**-16
    for segment in range(9):
        below = np.flatnonzero(boundary)[:segment]
        base = offset + (below[-1] + 1 if below.size else 0)
        n = int((groups == segment).sum())
        inner = thresholds[(groups[:-1] == segment) & (groups[1:] == segment)]
        assert inner.size == max(n - 1, 0)
        if segment < 8 and inner.size == 0:  # (κ from base + 1/2 up to base + 1 at the boundary)
            a[segment], b[segment], top[segment] = 0.5 / boundaries[segment], -(base + 0.5), base
            if not signed and segment == 0:  # (a positive value is never code 0)
                a[segment], b[segment], top[segment] = 0.0, -1.5, 1
        elif inner.size == 0:  # (above the last boundary: one code)
            b[segment], top[segment] = -(base + 0.5), base
        else:
            decade = 10.0 ** (segment - 7)
            a[segment], b[segment] = n / (0.9 * decade), n / 9 - base
            top[segment] = base + n - 1
            above = np.nextafter(inner, np.float32(2.0))
            j = base + np.arange(1, n, dtype=np.float64)
            assert np.all(kappa(inner, segment) - j < margin), (signed, segment)
            assert np.all(j - kappa(above, segment) < margin), (signed, segment)
        # (above the boundary below, κ > base: truncation gives base or more, with no clamp)
        if segment > 0:
            first = np.nextafter(boundaries[segment - 1], np.float32(2.0))
            assert kappa(np.array([first]), segment)[0] > base, (signed, segment)
        # (a boundary is flagged where it decides the code of its negative)
        if signed and segment < 8:
            at = kappa(boundaries[segment : segment + 1], segment)[0]
            assert abs(at - round(at)) < margin or base + n - 1 >= 2 * offset, segment
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


def _kappa(values: str) -> list[str]:
    """C lines: ``bits`` of ``x = v/d`` for the 16 floats at ``values``, their segment ``seg``
    and ``kappa`` (:func:`segment_tables`), with the constants of :func:`segment_encoder`."""
    return [
        "      const __m512i bits = _mm512_castps_si512("
        f"_mm512_div_ps(_mm512_loadu_ps({values}), divisor));",
        "      const __m512i u = _mm512_and_si512(bits, magnitude);",
        "      const __m512i e = _mm512_max_epu32(_mm512_srli_epi32(u, 23), low_binade);",
        "      __m512i seg = _mm512_permutex2var_epi32(seg_lo, e, seg_hi);",
        "      seg = _mm512_mask_add_epi32(seg, _mm512_cmpgt_epi32_mask(u,"
        " _mm512_permutex2var_epi32(tb_lo, e, tb_hi)), seg, one);",
        "      const __m512 kappa = _mm512_fmsub_ps(_mm512_castsi512_ps(u),"
        " _mm512_permutexvar_ps(seg, a), _mm512_permutexvar_ps(seg, b));",
    ]


def segment_encoder(suffix: str, signed: bool) -> list[str]:
    """``encode_<suffix>``: a full block's codes by :func:`segment_tables`, in registers.

    The bucket table's gather of 16 entries costs more than the rest of the
    encoding; here every look-up is a permutation of a register (32 entries
    by binade, 16 by segment). The tables hold the code's offset, so a
    positive value's code is ``min(⌊κ⌋, TOP)``; a negative one of the
    signed code takes ``254`` minus it, and an unsigned value that is not
    positive takes 0 (:func:`segment_tables` says why that is all). Four
    groups of 16 codes are packed to bytes with saturation (a negative
    value's ``-1``, for the value -1 itself, becomes code 0). The nearest
    any ``κ`` came to an integer is kept in a register (``vrangeps``: the
    smaller magnitude) and checked once: the function returns nonzero when
    it is within :data:`_NEAR`, and the caller then has ``fix_<suffix>``
    find those values again and encode each with the bucket table (about 3%
    of blocks of random values hold one). The caller passes only finite
    blocks, so ``κ`` is never NaN.
    """
    tables = segment_tables(signed)
    name = f"SEGMENT_{suffix}"
    near = f"(float){_NEAR!r}"
    constants = [
        "  const __m512 divisor = _mm512_set1_ps(d);",
        "  const __m512i one = _mm512_set1_epi32(1), magnitude = _mm512_set1_epi32(0x7FFFFFFF);",
        f"  const __m512i low_binade = _mm512_set1_epi32({_LOW_BINADE});",
        f"  const __m512i seg_lo = _mm512_load_si512({name}_SEG),"
        f" seg_hi = _mm512_load_si512({name}_SEG + 16);",
        f"  const __m512i tb_lo = _mm512_load_si512({name}_TB),"
        f" tb_hi = _mm512_load_si512({name}_TB + 16);",
        f"  const __m512 a = _mm512_load_ps((const float*){name}_A),"
        f" b = _mm512_load_ps((const float*){name}_B);",
    ]
    if signed:  # (x = -u: 127 - min(lt, 127), lt = ⌊κ⌋ - 127, i.e. 254 - ⌊κ⌋, -1 -> 0)
        position = [
            "      const __m512i c = _mm512_min_epi32(_mm512_cvttps_epi32(kappa),"
            " _mm512_permutexvar_epi32(seg, top));",
            "      pos[k] = _mm512_mask_sub_epi32(c, _mm512_movepi32_mask(bits), c254, c);",
        ]
    else:  # (-0.0, and 0.0: code 0)
        position = [
            "      pos[k] = _mm512_maskz_min_epi32(_mm512_cmpgt_epi32_mask(bits, zero),"
            " _mm512_cvttps_epi32(kappa), _mm512_permutexvar_epi32(seg, top));",
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
        *constants,
        "  const __m512i c254 = _mm512_set1_epi32(254);"
        if signed
        else "  const __m512i zero = _mm512_setzero_si512();",
        "  const __m512i order = _mm512_loadu_si512(PACK_ORDER), top = "
        f"_mm512_load_si512({name}_TOP);",
        "  __m512 nearest = _mm512_set1_ps(1.0f);",
        "  for (int j = 0; j < QBLOCK; j += 64) {",
        "    __m512i pos[4];",
        "    for (int k = 0; k < 4; ++k) {",
        *_kappa("v + j + 16 * k"),
        # (κ minus the nearest integer; the smaller magnitude of two, sign cleared)
        "      nearest = _mm512_range_ps(nearest,"
        " _mm512_reduce_ps(kappa, _MM_FROUND_TO_NEAREST_INT), 0x0A);",
        *position,
        "    }",
        "    const __m512i bytes = _mm512_packus_epi16(_mm512_packus_epi32(pos[0], pos[1]),",
        "                                              _mm512_packus_epi32(pos[2], pos[3]));",
        "    _mm512_storeu_si512(q + j, _mm512_permutexvar_epi32(order, bytes));",
        "  }",
        f"  return _mm512_cmp_ps_mask(nearest, _mm512_set1_ps({near}), _CMP_LT_OQ) != 0;",
        "}",
        # (the flagged values alone, again: ~3% of blocks hold one, mostly one or two)
        f"static void fix_{suffix}(const float* restrict v, float d, uint8_t* restrict q) {{",
        *constants,
        "  for (int j = 0; j < QBLOCK; j += 16) {",
        *_kappa("v + j"),
        "    __mmask16 close = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_reduce_ps(kappa,"
        f" _MM_FROUND_TO_NEAREST_INT)), _mm512_set1_ps({near}), _CMP_LT_OQ);",
        "    for (; close; close &= close - 1) {",
        "      const int i = j + __builtin_ctz(close);",
        f"      q[i] = bucket_{suffix}(v[i] / d);",
        "    }",
        "  }",
        "}",
        "#endif",
    ]


def code_functions(suffix: str, signed: bool) -> list[str]:
    """The tables and the ``decode_``/``encode_``/``quantize_<suffix>`` functions of one code."""
    code = _lowmem.dynamic_code(signed)
    return [
        _lowmem_codes.float_table(f"CODE_{suffix}", code),
        _lowmem_codes.byte_planes(f"PLANES_{suffix}", code),
        _lowmem_codes.int_table(f"BUCKET_{suffix}", _lowmem_codes.bucket_table(signed)),
        *_lowmem_codes.decoder(suffix),
        *_lowmem_codes.bucket_coder(suffix, signed),
        *segment_encoder(suffix, signed),
        *_lowmem_codes.quantizer(suffix),
    ]
