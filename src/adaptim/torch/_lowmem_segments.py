"""The 8-bit codes' in-register encoder for the native loop (AVX-512): segments of the code.

Encoding must give the nearest code exactly as
:func:`._lowmem.quantize_blockwise` does: the number of thresholds (midpoints
between code points) below ``x/a``. :mod:`._lowmem_codes` does it with one
look-up in a table of buckets by the float's top bits, a gather per 16
values; here a whole block is encoded without one. The code is piecewise
even: inside each decade its thresholds are an even grid, so the decade
(*segment*, found from the float's binade and one comparison) gives a
multiply-add whose integer part is the code (:func:`segment_tables` proves
it for every threshold, with ``x`` taken as ``v·(1/a)``), and the few
values too close to a threshold to be sure are encoded again from ``v/a``
with the buckets.
"""

from __future__ import annotations

import numpy as np

from adaptim.torch import _lowmem, _lowmem_codes

#: The in-register encoder (:func:`segment_tables`): the binades of ``|x/a|`` from 2⁻²⁵
#: up (smaller values are counted in that one), indexed by the exponent's low 5 bits,
#: and how close (in steps between thresholds) a value may come to a threshold before
#: it is encoded again with the bucket table.
_LOW_BINADE = 127 - 25
_NEAR = 2.0**-14
_CLOSE = int(_NEAR * 2**16)  # (δ in the 16-bit fixed point of κ)
#: ``x/a`` is computed as ``v·(1/a)``, a multiply rather than a division (a division of
#: 16 floats holds the divider for 4-6 cycles; measured ~6% of the step); that lies
#: within 3 float steps of the rounded quotient, so every value within :data:`_STEPS`
#: steps of a threshold is flagged and encoded again from the quotient itself
#: (:func:`segment_tables` proves it).
_STEPS = 4


def _group(value: float) -> int:
    """0 for the code 0, 1 + k for decade k (values in 10^(k-7)..10^(k-6)), 8 for 1.0."""
    if value == 0.0:
        return 0
    if value == 1.0:
        return 8
    return int(np.floor(np.log10(value))) + 8


def _segments(signed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per segment ``A``, ``B``, ``TOP``; and the boundaries (thresholds between segments)."""
    code = _lowmem.dynamic_code(signed).numpy()
    points = code[code >= 0]
    thresholds = _lowmem_codes.positive_thresholds(signed)
    groups = np.array([_group(float(x)) for x in points])
    assert np.array_equal(np.unique(groups), np.arange(9)) and np.all(np.diff(groups) >= 0)
    boundary = groups[:-1] != groups[1:]
    boundaries = thresholds[boundary]
    offset = 127 if signed else 0
    a, b = np.zeros(9, np.float64), np.zeros(9, np.float64)
    top = np.zeros(9, np.int32)
    for segment in range(9):
        below = np.flatnonzero(boundary)[:segment]
        base = offset + (below[-1] + 1 if below.size else 0)
        n = int((groups == segment).sum())
        if segment == 8:  # (1.0 alone: κ from 255 at the last boundary to 255.25 at 1)
            a[8] = 0.25 / (1.0 - float(boundaries[7]))
            b[8], top[8] = float(boundaries[7]) * a[8] - 255.0, 255
        elif n == 1:  # (κ from base + 1/2 up to base + 1 at the boundary)
            first = 1 if not signed and segment == 0 else base  # (a positive value is never 0)
            a[segment], b[segment], top[segment] = 0.5 / boundaries[segment], -(first + 0.5), first
        else:
            decade = 10.0 ** (segment - 7)
            a[segment], b[segment], top[segment] = n / (0.9 * decade), n / 9 - base, base + n - 1
    return a.astype(np.float32), b.astype(np.float32), top, boundaries


def _steps(bits: np.ndarray, count: int) -> np.ndarray:
    """The float32 bit patterns within ``count`` steps of ``bits`` (non-negative, below 2)."""
    near = (bits[:, None].astype(np.int64) + np.arange(-count, count + 1)).reshape(-1)
    return near[(near >= 0) & (near <= 0x40000000)].astype(np.uint32)


def emulate(tables: dict[str, np.ndarray], bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's code (of ``+x``, before the sign) and near flag for magnitudes ``bits``.

    As the C does it: the slot ``e + (u > TB[e])``, and ``κ + δ = u·A - B``
    in 16-bit fixed point, ``K = ⌊u·A' - B'⌋`` with ``A' = 2¹⁶·A`` and
    ``B' = 2¹⁶·B - c``, ``c = 2¹⁶·δ`` (:func:`scaled_tables`; one rounding,
    float64 holds the product and difference exactly). The code is
    ``min(⌊K/2¹⁶⌋, TOP)``, flagged where ``κ``'s fraction is within
    :data:`_NEAR` of 0 or 1, ``K mod 2¹⁶ < 2c``: the shift by ``δ`` makes
    that one test of the low bits (the code of a flagged value may then be
    one too high; the bucket table encodes those again).
    """
    u = bits.astype(np.int64)
    e = np.maximum(u >> 23, _LOW_BINADE)
    slot = (e + (u > tables["TB"][e % 32])) % 32
    x = bits.view(np.float32).astype(np.float64)
    scaled = scaled_tables(tables)
    a, b = (scaled[k].view(np.float32)[slot].astype(np.float64) for k in ("A", "B"))
    fixed = np.floor((x * a - b).astype(np.float32).astype(np.float64)).astype(np.int64)
    near = fixed % 2**16 < 2 * _CLOSE
    return np.minimum(fixed >> 16, tables["TOP"][slot]), near


def scaled_tables(tables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The C's ``A`` and ``B`` (as float32 bits): ``2¹⁶·A`` and ``2¹⁶·B - c`` (:func:`emulate`).

    Both exact in float32: ``2¹⁶·B`` is below 2²⁴ in magnitude, a float32
    whose step there is at most 1, so subtracting the integer ``c`` loses
    nothing (checked).
    """
    a = tables["A"] * np.float32(2**16)
    b = tables["B"] * np.float32(2**16) - np.float32(_CLOSE)
    exact = tables["B"].astype(np.float64) * 2**16 - _CLOSE
    assert np.array_equal(b.astype(np.float64), exact)
    return {"A": a.view(np.uint32), "B": b.view(np.uint32)}


def segment_tables(signed: bool) -> dict[str, np.ndarray]:
    """The in-register encoder's tables by binade, checked to give the nearest code.

    The positive thresholds fall in 9 *segments*: below the first code,
    each decade's, and 1.0. Inside decade ``k`` with ``n`` codes the
    thresholds are the even grid ``10^(k-6)·(0.1 + 0.9·j/n)`` up to float32
    rounding, so ``κ = |y|·A - B`` with ``A = n/(0.9·10^(k-6))``,
    ``B = n/9 - base`` is ``base + j`` at the ``j``-th (``base``: the codes
    below the segment, 127 more for the signed code, whose positive codes
    start there), and ``min(⌊κ⌋, TOP)``, ``TOP = base + n - 1``, is the code
    of a positive ``y`` (the clamp: between a decade's last code and the
    boundary the grid runs one step further than the code). A segment of one
    code has ``κ`` from ``base + 1/2`` to ``base + 1`` at its boundary; 1.0
    from 255 at the last boundary to 255.25, so every boundary is an integer
    of the segment below it.

    The tables are per binade (a float's exponent, ``SLOT = e mod 32``): a
    binade's entry holds the segment its first value lies in; the one binade
    holding a boundary ``b`` also has ``TB``, a *switch point*, and values
    above it take the next binade's entry, the next segment. The switch
    points lie :data:`_STEPS` float steps above ``b`` (below it for 1.0's), so
    around every boundary the lower segment's ``κ`` is near its integer.

    ``x = v/a`` is ``v·(1/a)`` in the loop, within 3 steps of the rounded
    quotient, so the code may differ only within :data:`_STEPS` steps of a
    threshold. The check below emulates the encoder (:func:`emulate`) around
    every threshold, switch point and binade start: every value within
    :data:`_STEPS` steps of a threshold is flagged (``κ`` within
    :data:`_NEAR` of an integer), and every value not flagged, out to 64 steps
    away, gets the nearest code. Between those places ``κ`` is one segment's
    increasing line and the code does not change, so its floor is right there
    too.
    """
    a, b, top, boundaries = _segments(signed)
    switch = boundaries.view(np.int32) + _STEPS
    switch[7] = boundaries[7:].view(np.int32)[0] - _STEPS - 1  # (1.0 takes the values near b)
    tables = {
        "TB": np.full(32, 0x7F800000, np.int32),  # (no switch point in the binade: +inf)
        "A": np.zeros(32, np.float32),
        "B": np.zeros(32, np.float32),
        "TOP": np.zeros(32, np.int32),
    }
    for exponent in range(_LOW_BINADE, 129):
        start = exponent << 23
        segment = int((switch < start).sum())
        slot = exponent % 32
        tables["A"][slot], tables["B"][slot] = a[segment], b[segment]
        tables["TOP"][slot] = top[segment]
        inside = switch[(switch >= start) & (switch < start + (1 << 23))]
        assert inside.size <= 1 and (exponent > _LOW_BINADE or switch[0] >= start + (1 << 23))
        if inside.size:
            tables["TB"][slot] = inside[0]
    assert 129 - _LOW_BINADE <= 32 and tables["TB"][127 % 32] == 0x7F800000
    thresholds = _lowmem_codes.positive_thresholds(signed)
    every = thresholds.view(np.uint32)
    starts = np.arange(_LOW_BINADE, 128, dtype=np.uint32) << 23
    places = np.concatenate([every, switch.astype(np.uint32), starts, [0, 1, 0x3F800000]])
    values = np.unique(_steps(places.astype(np.uint32), 64))
    code, near = emulate(tables, values)
    x = values.view(np.float32)
    want = np.searchsorted(thresholds, x, side="left") + (127 if signed else 0)
    if not signed:  # (a positive value is never code 0; zero is masked in the loop)
        want = np.maximum(want, 1)
    assert np.all(near | (code == want)), (signed, x[~near & (code != want)][:5])
    close = np.unique(_steps(every, _STEPS))
    assert np.all(emulate(tables, close)[1]), signed
    # (the negative side of the signed code: 254 - ⌊κ⌋ counts the thresholds below -x,
    # the mirrors of those at or above x, where x is not itself a threshold: flagged)
    if signed:
        negative = 127 - np.minimum(np.searchsorted(thresholds, x, side="right"), 127)
        assert np.all(near | (np.maximum(254 - code, 0) == negative)), signed
    return tables


def _int_list(values: np.ndarray) -> str:
    return ", ".join(map(str, values.tolist()))


def _fixed(values: str, signed: bool) -> list[str]:
    """C lines: ``bits`` of ``x = v·(1/d)`` (or ``v/d``: ``recip``) for the 16 floats at
    ``values``, their table ``slot`` and ``fixed``, ``2¹⁶·κ + c`` truncated (:func:`segment_tables`,
    :func:`emulate`), with the constants of :func:`segment_encoder`.

    The unsigned code's values are not negative but for -0.0, and a value
    that is not positive (zero, or its sign set) takes code 0 whatever its
    ``κ``: ``u`` is ``x`` itself, and those lanes' ``fixed`` is 0 (the
    multiply-add masked), never flagged."""
    # (unsigned: the lanes of positive values, the others' fixed 0 and not flagged)
    live, masked = ("", "") if signed else ("live, ", "mask_")
    return [
        f"      const __m512 x = _mm512_loadu_ps({values});",
        "      const __m512i bits = _mm512_castps_si512(recip ? _mm512_mul_ps(x, reciprocal)"
        " : _mm512_div_ps(x, divisor));",
        "      const __m512i u = _mm512_and_si512(bits, magnitude);"
        if signed
        else "      const __m512i u = bits;\n"
        "      const __mmask16 live = _mm512_cmpgt_epi32_mask(bits, zero);",
        "      const __m512i e = _mm512_max_epu32(_mm512_srli_epi32(u, 23), low_binade);",
        "      const __m512i slot = _mm512_mask_add_epi32(e, _mm512_cmpgt_epi32_mask(u,"
        " _mm512_permutex2var_epi32(tb_lo, e, tb_hi)), e, one);",
        f"      const __m512i fixed = _mm512_cvttps_epi32(_mm512_{'' if signed else 'maskz_'}"
        f"fmsub_ps({live}_mm512_castsi512_ps(u),"
        " _mm512_permutex2var_ps(a_lo, slot, a_hi), _mm512_permutex2var_ps(b_lo, slot, b_hi)));",
        # (κ's fraction within δ of 0 or 1: B holds the shift by δ, see emulate)
        f"      const __mmask16 close = _mm512_{masked}testn_epi32_mask({live}fixed, close_bits);",
    ]


def _bytes(name: str, order: str, parts: str) -> list[str]:
    """C lines: ``name``, the bytes at ``order`` of each dword of ``parts[0..3]``, 64 in order."""
    return [
        f"    const __m512i {name} = _mm512_inserti64x4(",
        f"        _mm512_permutex2var_epi8({parts}[0], {order}, {parts}[1]),",
        f"        _mm512_castsi512_si256(_mm512_permutex2var_epi8({parts}[2], {order}, {parts}[3])),"
        " 1);",
    ]


def segment_encoder(suffix: str, signed: bool) -> list[str]:
    """``encode_<suffix>``: a full block's codes by :func:`segment_tables`, in registers.

    The bucket table's gather of 16 entries costs more than the rest of the
    encoding; here every look-up is a permutation of registers (32 entries
    by binade, two registers). ``κ`` is taken in 16-bit fixed point, so one
    conversion gives both the code (its third byte) and the fraction, whose
    nearness to an integer is one test of its low bits (``B`` holds the
    shift by the near band, :func:`emulate`). The tables hold the
    code's offset, so a positive value's code is ``min(⌊κ⌋, TOP)``; a
    negative one of the signed code takes ``254`` minus it (saturated: the
    value -1 itself is code 0), and an unsigned value that is not positive
    takes 0 (:func:`segment_tables` says why that is all). The clamp and the
    sign are applied to 64 codes at once, as bytes (the slots picked out of
    their dwords by byte permutations, ``TOP`` by one 64-entry byte look-up,
    the signs as four 16-lane masks joined into one). The function returns
    nonzero when any value was near a
    threshold, and the caller then has ``fix_<suffix>`` find those values
    again and encode each with the bucket table from the quotient ``v/d``
    itself (about 3% of blocks of random values hold one). The caller passes
    only finite blocks, so ``κ`` is never NaN.

    ``x`` is ``v·(1/d)`` where ``1/d`` is a normal float and, for the
    unsigned code, ``d ≤ 1`` (then ``x > 0`` exactly where ``v/d > 0``: a
    positive value never takes code 0, and its product with ``1/d ≥ 1``
    never underflows to 0); otherwise the division.
    """
    tables = segment_tables(signed)
    name = f"SEGMENT_{suffix}"
    limit = "0x1p125f" if signed else "1.0f"
    scaled = scaled_tables(tables)
    top = np.zeros(64, np.uint8)
    for exponent in range(_LOW_BINADE, 129):  # (the byte look-up takes the slot's low 6 bits)
        top[exponent % 64] = tables["TOP"][exponent % 32]
    constants = [
        "  const __m512 divisor = _mm512_set1_ps(d), reciprocal = _mm512_set1_ps(1.0f / d);",
        "  const __m512i one = _mm512_set1_epi32(1);",
        "  const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF);"
        if signed
        else "  const __m512i zero = _mm512_setzero_si512();",
        f"  const __m512i low_binade = _mm512_set1_epi32({_LOW_BINADE});",
        f"  const __m512i close_bits = _mm512_set1_epi32({0xFFFF & ~(2 * _CLOSE - 1)});",
        f"  const __m512i tb_lo = _mm512_load_si512({name}_TB),"
        f" tb_hi = _mm512_load_si512({name}_TB + 16);",
        f"  const __m512 a_lo = _mm512_load_ps((const float*){name}_A),"
        f" a_hi = _mm512_load_ps((const float*){name}_A + 16);",
        f"  const __m512 b_lo = _mm512_load_ps((const float*){name}_B),"
        f" b_hi = _mm512_load_ps((const float*){name}_B + 16);",
    ]
    if signed:  # (x = -u: 127 - min(lt, 127), lt = ⌊κ⌋ - 127, i.e. 254 - ⌊κ⌋, -1 -> 0)
        keep = [
            "      fixeds[k] = fixed; slots[k] = slot; negative[k] = _mm512_movepi32_mask(bits);"
        ]
        # (the four 16-lane sign masks joined in memory order: cheaper than picking the
        # sign bytes out of the dwords by two more byte permutations)
        finish = [
            "    const __mmask64 signs = _kunpackd_mask64(_kunpackw_mask32(negative[3], negative[2]),",
            "                                             _kunpackw_mask32(negative[1], negative[0]));",
            "    codes = _mm512_mask_subs_epu8(codes, signs, c254, codes);",
        ]
    else:  # (-0.0, and 0.0: code 0, their fixed masked to 0 in _fixed)
        keep = ["      fixeds[k] = fixed; slots[k] = slot;"]
        finish = []
    table = "static const {} {}_{}[32] __attribute__((aligned(64))) = {{{}}};"
    return [
        "#ifdef ADAPTIM_VBMI",
        table.format("int32_t", name, "TB", _int_list(tables["TB"])),
        table.format("uint32_t", name, "A", _int_list(scaled["A"])),
        table.format("uint32_t", name, "B", _int_list(scaled["B"])),
        f"static const uint8_t {name}_TOP[64] __attribute__((aligned(64))) = {{{_int_list(top)}}};",
        # (whether x is v·(1/d): see the docstring)
        f"static inline int recip_{suffix}(float d) {{ return d >= 0x1p-125f && d <= {limit}; }}",
        f"static inline __attribute__((always_inline)) int encode_{suffix}_with("
        "const float* restrict v, float d, uint8_t* restrict q, const int recip) {",
        *constants,
        "  const __m512i c254 = _mm512_set1_epi8((char)254);" if signed else "",
        "  const __m512i pick0 = _mm512_load_si512(PICK_BYTE),"
        " pick2 = _mm512_load_si512(PICK_BYTE + 128);",
        f"  const __m512i tops = _mm512_load_si512({name}_TOP);",
        "  __mmask16 flagged = 0;",
        "  for (int j = 0; j < QBLOCK; j += 64) {",
        "    __m512i fixeds[4], slots[4];",
        "    __mmask16 negative[4];" if signed else "",
        "    for (int k = 0; k < 4; ++k) {",
        *_fixed("v + j + 16 * k", signed),
        "      flagged |= close;",
        *keep,
        "    }",
        *_bytes("codes_all", "pick2", "fixeds"),
        *_bytes("slot", "pick0", "slots"),
        "    __m512i codes = _mm512_min_epu8(codes_all, _mm512_permutexvar_epi8(slot, tops));",
        *finish,
        "    _mm512_storeu_si512(q + j, codes);",
        "  }",
        "  return flagged != 0;",
        "}",
        f"static inline int encode_{suffix}(const float* restrict v, float d, uint8_t* restrict q) {{",
        f"  return recip_{suffix}(d) ? encode_{suffix}_with(v, d, q, 1)"
        f" : encode_{suffix}_with(v, d, q, 0);",
        "}",
        # (the flagged values alone, again: ~3% of blocks hold one, mostly one or two)
        f"static void fix_{suffix}(const float* restrict v, float d, uint8_t* restrict q) {{",
        f"  const int recip = recip_{suffix}(d);",
        *constants,
        "  for (int j = 0; j < QBLOCK; j += 16) {",
        *_fixed("v + j", signed),
        "    for (__mmask16 left = close; left; left &= left - 1) {",
        "      const int i = j + __builtin_ctz(left);",
        f"      q[i] = bucket_{suffix}(v[i] / d);",
        "    }",
        "  }",
        "}",
        "#endif",
    ]


def code_functions(suffix: str, signed: bool) -> list[str]:
    """The tables and the ``decode_``/``encode_``/``quantize_<suffix>`` functions of one code."""
    code = _lowmem.dynamic_code(signed)
    assert not signed or _lowmem_codes.mirrored(code)  # (the signed decoder's fold)
    return [
        _lowmem_codes.float_table(f"CODE_{suffix}", code),
        _lowmem_codes.byte_planes(f"PLANES_{suffix}", code),
        _lowmem_codes.int_table(f"BUCKET_{suffix}", _lowmem_codes.bucket_table(signed)),
        *_lowmem_codes.decoder(suffix, signed),
        *_lowmem_codes.bucket_coder(suffix, signed),
        *segment_encoder(suffix, signed),
        *_lowmem_codes.quantizer(suffix),
    ]
