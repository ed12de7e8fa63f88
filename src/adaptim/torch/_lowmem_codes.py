"""The 8-bit code in C for the native loop (:mod:`._lowmem_native`): tables and the encoder.

Decoding is a look-up, ``code[q]·a``. Encoding must give the nearest code
exactly as :func:`._lowmem.quantize_blockwise` does (the number of midpoints
between code points, *thresholds*, that lie below ``x/a``) without a binary
search, whose eight dependent look-ups per value cost more than the whole
update: the float's top bits pick a bucket whose table entry holds the count
below it and the low bits of the one threshold that may lie inside
(:func:`bucket_table`).
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


def int_table(name: str, values: np.ndarray) -> str:
    return (
        f"static const int32_t {name}[{values.size}] = {{{', '.join(map(str, values.tolist()))}}};"
    )


def quantizer(suffix: str, signed: bool) -> list[str]:
    """``quantize_<suffix>``: a block's new maximum and its codes (nearest, as the reference).

    ``x/a`` lies in [-1, 1] (a is the largest magnitude), so no clamp is needed.
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
        f"static inline void quantize_{suffix}(const float* restrict v, int64_t m,",
        "                                    uint8_t* restrict q, float* restrict absmax) {",
        # (the largest magnitude as the largest integer of the sign-cleared bits:
        # the same order for floats, and a vectorised reduction without branches)
        "  uint32_t top = 0;",
        "  #pragma omp simd reduction(max:top)",
        "  for (int64_t j = 0; j < m; ++j) {",
        "      uint32_t u; memcpy(&u, &v[j], 4); u &= 0x7FFFFFFFu; top = u > top ? u : top;",
        "  }",
        "  float a; memcpy(&a, &top, 4);",
        "  *absmax = a;",
        "  const float d = a > 0.0f ? a : 1.0f;",
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
