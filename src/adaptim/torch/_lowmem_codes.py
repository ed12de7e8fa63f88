"""The 8-bit code in C for the native loop (:mod:`._lowmem_native`): tables, decoder, encoder.

Decoding is a look-up, ``code[q]·a`` (in registers where AVX-512 VBMI
allows, :func:`decoder`). Encoding must give the nearest code
exactly as :func:`._lowmem.quantize_blockwise` does (the number of midpoints
between code points, *thresholds*, that lie below ``x/a``) without a binary
search, whose eight dependent look-ups per value cost more than the whole
update: the float's top bits pick a bucket whose table entry holds the count
below it and the low bits of the one threshold that may lie inside
(:func:`bucket_table`). With AVX-512 a full block is encoded without that
gather (:mod:`._lowmem_segments`): the thresholds of each decade of the code
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


def decoder(suffix: str, signed: bool) -> list[str]:
    """``decode_<suffix>``: ``code[q]·a`` for ``m`` codes into ``out``.

    A gather of 16 floats costs about as much as the whole update of 16
    values, so with AVX-512 VBMI the 256-float table is held in registers as
    four byte planes (:func:`byte_planes`): for 64 codes at once each plane's
    byte is a ``vpermi2b`` over 128 entries, and unpacking the four bytes
    gives the floats, exactly the table's. The unsigned code takes both
    halves of the table and a blend by the code's top bit. The signed code
    is the mirror of its upper half (``code[127 - k] = -code[127 + k]``,
    bit for bit, checked in :func:`mirrored`), so one permute per plane
    over the upper half does: code ``c ≥ 128`` is entry ``c - 128`` (the
    permute reads the index's low 7 bits), ``c < 127`` entry ``126 - c``
    with the sign bit set, and code 127 (0.0) is zeroed by the permute's
    mask. Against both halves and the blend that is 2.2-2.8% of the step (kernel
    alone, 262k elements, one thread, paired runs under load). Elsewhere (and
    for a block's tail) it is the plain look-up.
    """
    planes = f"PLANES_{suffix}"
    if signed:
        lookup = [
            "      const __mmask64 negative = _mm512_cmplt_epu8_mask(c, zero_code),",
            "                      nonzero = _mm512_cmpneq_epi8_mask(c, zero_code);",
            "      const __m512i entry = _mm512_mask_sub_epi8(c, negative, below_zero, c);",
            "      __m512i b[4];",
            "      for (int k = 0; k < 4; ++k)",
            "        b[k] = _mm512_maskz_permutex2var_epi8(nonzero, p[4 * k + 2], entry,"
            " p[4 * k + 3]);",
            # (byte 3 of a float in (0, 1] is below 0x80: adding it sets the sign)
            "      b[3] = _mm512_mask_add_epi8(b[3], negative, b[3], sign);",
        ]
        constants = [
            "    const __m512i zero_code = _mm512_set1_epi8(127), below_zero = _mm512_set1_epi8(126);",
            "    const __m512i sign = _mm512_set1_epi8((char)0x80);",
        ]
    else:
        lookup = [
            "      const __mmask64 high = _mm512_movepi8_mask(c);",
            "      __m512i b[4];",
            "      for (int k = 0; k < 4; ++k)",
            "        b[k] = _mm512_mask_blend_epi8(high,",
            "                 _mm512_permutex2var_epi8(p[4 * k], c, p[4 * k + 1]),",
            "                 _mm512_permutex2var_epi8(p[4 * k + 2], c, p[4 * k + 3]));",
        ]
        constants = []
    lines = [
        f"static inline void decode_{suffix}(const uint8_t* restrict q, int64_t m, float a,",
        "                                  float* restrict out) {",
        "  int64_t j = 0;",
        "#ifdef ADAPTIM_VBMI",
        "  if (m >= 64) {",
        "    const __m512i order = _mm512_loadu_si512(DECODE_ORDER);",
        "    const __m512 scale = _mm512_set1_ps(a);",
        *constants,
        "    __m512i p[16];",
        f"    for (int k = 0; k < 16; ++k) p[k] = _mm512_load_si512({planes} + 64 * k);",
        "    for (; j + 64 <= m; j += 64) {",
        "      const __m512i c = _mm512_permutexvar_epi8(order, _mm512_loadu_si512(q + j));",
        *lookup,
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


def mirrored(code: torch.Tensor) -> bool:
    """Whether a signed code is the mirror of its upper half, bit for bit (the decoder's fold)."""
    k = torch.arange(1, 128)
    upper, lower = code[127 + k], code[127 - k]
    return code[127].item() == 0.0 and torch.equal(
        (-lower).view(torch.int32), upper.view(torch.int32)
    )


#: For the encoder (:mod:`._lowmem_segments`): byte ``k`` of each dword of two registers,
#: 32 in order, as a ``vpermt2b`` index (``PICK_BYTE + 64·k``; the upper half unused).
PICK_BYTE = [
    (4 * (i % 16) + 64 * (i // 16) + k) if i < 32 else 0 for k in range(4) for i in range(64)
]


#: The in-register decoder and encoder: AVX-512 with its byte permutations (VBMI).
VBMI_HEADER = [
    "#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) \\",
    "    && defined(__AVX512VBMI__)",
    "#define ADAPTIM_VBMI 1",
    "#include <immintrin.h>",
    "static const uint8_t DECODE_ORDER[64] __attribute__((aligned(64))) = {"
    + ", ".join(map(str, DECODE_ORDER))
    + "};",
    "static const uint8_t PICK_BYTE[256] __attribute__((aligned(64))) = {"
    + ", ".join(map(str, PICK_BYTE))
    + "};",
    "#endif",
]


def int_table(name: str, values: np.ndarray) -> str:
    return (
        f"static const int32_t {name}[{values.size}] = {{{', '.join(map(str, values.tolist()))}}};"
    )


def bucket_coder(suffix: str, signed: bool) -> list[str]:
    """``bucket_<suffix>``: the nearest code of one ``x = v/a`` by :func:`bucket_table`."""
    if signed:
        position = [
            "  const int32_t le = (e & 255) + (low >= t), m = le < 127 ? le : 127;",
            "  return (uint8_t)(127 + lt - neg * (lt + m));",
        ]
    else:  # (-0.0 is the only negative value a non-negative entry can hold: code 0)
        position = [
            "  const int32_t pos = lt * (neg ^ 1);",
            "  return (uint8_t)(pos + ((x > 0.0f) & (pos == 0)));  /* never 0.0 */",
        ]
    return [
        f"static inline uint8_t bucket_{suffix}(float x) {{",
        "  uint32_t bits; memcpy(&bits, &x, 4);",
        f"  int32_t b = (int32_t)((bits & 0x7FFFFFFFu) >> {_BUCKET_SHIFT}) - {_FIRST};",
        f"  b = b < 0 ? 0 : (b > {_BUCKETS - 1} ? {_BUCKETS - 1} : b);",
        "  const int32_t neg = (int32_t)(bits >> 31), low = (int32_t)(bits & 0xFFFFu);",
        f"  const int32_t e = BUCKET_{suffix}[b], t = e >> 8;",
        "  const int32_t lt = (e & 255) + (low > t);",
        *position,
        "}",
    ]


def quantizer(suffix: str) -> list[str]:
    """``quantize_<suffix>``: a block's new maximum and its codes (nearest, as the reference).

    ``top`` is the largest magnitude's bits, sign cleared (the update loop
    finds it as it writes the block: the largest such integer is the largest
    float, a vectorised reduction without branches). ``x/a`` lies in [-1, 1]
    (a is the largest magnitude), so no clamp is needed. A full block of
    finite values is encoded in registers where the CPU allows
    (:mod:`._lowmem_segments`: ``encode_``, then ``fix_`` for the few values
    it flags); the rest with the bucket table, a gather per 16 values.
    """
    return [
        f"static inline void quantize_{suffix}(const float* restrict v, int64_t m, uint32_t top,",
        "                                    uint8_t* restrict q, float* restrict absmax) {",
        "  float a; memcpy(&a, &top, 4);",
        "  *absmax = a;",
        "  const float d = a > 0.0f ? a : 1.0f;",
        "#ifdef ADAPTIM_VBMI",
        "  if (m == QBLOCK && top < 0x7F800000u) {",
        f"    if (encode_{suffix}(v, d, q)) fix_{suffix}(v, d, q);",
        "    return;",
        "  }",
        "#endif",
        "  #pragma omp simd",
        f"  for (int64_t j = 0; j < m; ++j) q[j] = bucket_{suffix}(v[j] / d);",
        "}",
    ]
