"""The arithmetic of memory-light states that both front-ends share: codes and rounding bits.

A memory-light optimizer keeps its element-wise state in bfloat16 with
stochastic rounding or in block-wise 8 bits (``adaptim.torch._lowmem``
explains both formats; ``adaptim.numpy._lowmem`` is the NumPy twin). For a
state saved by one front-end to mean the same numbers in the other, and for
both to store the same bits, they take from here:

* the layout constants (:data:`BLOCK`, :data:`MIN_8BIT_NUMEL`, the
  ``_absmax`` suffix, which entries are non-negative);
* the 8-bit **dynamic code** (Dettmers 2016; bitsandbytes' ``dynamic`` and
  ``udynamic`` maps) and its **thresholds**, the midpoints between
  neighbouring code points: the nearest code of ``x`` is the number of
  thresholds below ``x``;
* the **counter-based rounding bits** of stochastic rounding: element ``i``
  of entry ``key`` of the parameter at position ``j`` written at step ``t``
  adds the top 16 bits of ``h(i xor k)`` below bf16's last mantissa bit,
  where ``h`` is :func:`mix32` and ``k`` = :func:`stream_key` ``(seed, j,
  key, t)``.

Everything here is NumPy or plain Python; :func:`mix32` uses operators only,
so it runs on Python ints, NumPy ``int64`` arrays and torch ``int64``
tensors alike.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any

import numpy as np

#: Quantisation block length, and the size below which a tensor keeps its
#: ordinary state (as bitsandbytes does).
BLOCK = 256
MIN_8BIT_NUMEL = 4096
#: An 8-bit entry ``key`` keeps its float32 block maxima in ``key + ABSMAX_SUFFIX``.
ABSMAX_SUFFIX = "_absmax"

#: torch's names of element-wise state that is non-negative by construction
#: (sums and averages of squares, maxima of those, infinity norms): these use
#: the unsigned code, everything else the signed one.
NONNEGATIVE_STATE = frozenset(
    {"exp_avg_sq", "max_exp_avg_sq", "sum", "square_avg", "acc_delta", "exp_inf"}
)


def _linspace32(count: int) -> np.ndarray:
    """``count`` points from 0.1 to 1 in float32, as ``torch.linspace`` computes them on the CPU.

    The step is ``(1 - 0.1)/(count - 1)`` in float32; the lower half counts
    up from 0.1 and the upper half down from 1, each point one fused
    multiply-add (a single rounding). float64 computes ``step·i ± end``
    exactly here (24 + 8 bits), so rounding it once to float32 is that
    fused multiply-add. bitsandbytes builds its maps with ``torch.linspace``,
    so this reproduces them bit for bit (``tests/test_lowmem.py``).
    """
    start, end = np.float32(0.1), np.float32(1.0)
    step = np.float64((end - start) / np.float32(count - 1))
    index = np.arange(count, dtype=np.float64)
    up = step * index + np.float64(start)
    down = np.float64(end) - step * (count - 1 - index)
    return np.where(index < count // 2, up, down).astype(np.float32)


@functools.cache
def _dynamic_code(signed: bool) -> np.ndarray:
    points: list[np.ndarray] = []
    for k in range(7):
        grid = _linspace32(2 ** (k if signed else k + 1) + 1)
        midpoints = (grid[:-1] + grid[1:]) / np.float32(2)
        scaled = midpoints * np.float32(10.0 ** (k - 6))
        points += [scaled, -scaled] if signed else [scaled]
    points.append(np.array([0.0, 1.0], dtype=np.float32))
    code = np.sort(np.concatenate(points))
    assert code.size == 256 and code.dtype == np.float32
    code.flags.writeable = False
    return code


def dynamic_code(signed: bool) -> np.ndarray:
    """The 256 sorted float32 points of the dynamic quantisation code on [-1, 1] (or [0, 1]).

    Decade ``k`` (k = 0..6) holds the midpoints of an even float32 grid on
    [0.1, 1] with ``2^k + 1`` points (``2^(k+1) + 1`` unsigned), scaled by
    ``10^(k-6)``; the signed code mirrors them. With 0 and 1 that is 256
    points either way. (A read-only array, computed once.)
    """
    return _dynamic_code(signed)


@functools.cache
def _thresholds(signed: bool) -> np.ndarray:
    code = _dynamic_code(signed).astype(np.float64)
    midpoints = ((code[1:] + code[:-1]) / 2).astype(np.float32)
    midpoints.flags.writeable = False
    return midpoints


def thresholds(signed: bool) -> np.ndarray:
    """The 255 midpoints between neighbouring code points (float32, from their float64 means).

    The nearest code of ``x`` is the number of thresholds strictly below it:
    ``np.searchsorted(thresholds, x, side="left")``, ``torch.bucketize``.
    """
    return _thresholds(signed)


#: The mixer's odd multipliers: below 2³¹, so that a 32-bit value times one fits
#: a signed int64 and int64 arithmetic (torch's, NumPy's) computes what C's uint32 does.
MIX_MULTIPLIERS = (0x7FEB352D, 0x1B873593)
MASK32 = 0xFFFFFFFF

def mix32(x: Any) -> Any:
    """The 32-bit xorshift-multiply mixer ``h`` (a bijection of [0, 2³²), full avalanche).

    On a Python int or element-wise on an int64 array or tensor: operators
    only, each product of a 32-bit value and a multiplier below 2³¹ exact in
    int64 before it is masked.
    """
    x = x & MASK32
    x = x ^ (x >> 16)
    x = (x * MIX_MULTIPLIERS[0]) & MASK32
    x = x ^ (x >> 15)
    x = (x * MIX_MULTIPLIERS[1]) & MASK32
    return x ^ (x >> 16)


def entry_salt(seed: int, position: int, key: str) -> int:
    """The part of :func:`stream_key` fixed for one state entry of one parameter."""
    return int(mix32(mix32(mix32(seed + 0x9E3779B9) ^ position) + zlib.crc32(key.encode())))


def step_salt(step: int) -> int:
    """The part of :func:`stream_key` fixed for one step."""
    return int(mix32(step + 0x632BE5AB))


def stream_key(seed: int, position: int, key: str, step: int) -> int:
    """The key ``k`` of the rounding bits of entry ``key`` of parameter ``position`` at ``step``."""
    return entry_salt(seed, position, key) ^ step_salt(step)
