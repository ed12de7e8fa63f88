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
  adds 16 bits of ``h(i xor k)`` below bf16's last mantissa bit, where
  ``h`` is :func:`mix32` and ``k`` = :func:`stream_key` ``(seed, j, key,
  t)``. One hash serves two entries (:data:`ROUNDING_PARTNERS`): the first
  takes its top 16 bits, its partner the low 16 (:func:`noise_shift`).

Everything here is NumPy or plain Python; :func:`mix32` uses operators only,
so it runs on Python ints, NumPy ``int64`` arrays and torch ``int64``
tensors alike.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from adaptim.algorithms._spec import Algorithm

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


def encodable_keys(
    state: Mapping[str, Any], algorithm: Algorithm, is_elementwise: Callable[[Any], bool]
) -> list[str]:
    """The entries of ``state`` a memory-light format encodes: the rule's element-wise ones.

    Not ``step``, the rule's scalar state (NAdam's ``mu_product``) or block
    maxima; of the others, those ``is_elementwise`` accepts (the front-end's
    test of an array of the parameter's kind).
    """
    scalars = {"step", *algorithm.scalar_state}
    return [
        k
        for k, v in state.items()
        if k not in scalars and not k.endswith(ABSMAX_SUFFIX) and is_elementwise(v)
    ]


def check_state_bits(state_bits: Any, state_dtype: Any) -> int | None:
    """``state_bits`` validated: 8, or ``None`` (also for 32, full precision), and not both options.

    ``state_dtype`` is the other option as already validated (``None``: not
    given); both front-ends refuse the pair with the same message.
    """
    if state_bits is not None and (isinstance(state_bits, bool) or state_bits not in (8, 32)):
        raise ValueError(
            f"Invalid state_bits: {state_bits!r}; allowed: None or 32 (full precision) "
            "or 8 (block-wise quantised moments)."
        )
    if state_bits == 32:
        return None
    if state_bits is not None and state_dtype is not None:
        raise ValueError(
            f"Invalid state_dtype: {state_dtype!r} with state_bits={state_bits}; "
            "choose at most one of them."
        )
    return None if state_bits is None else int(state_bits)


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


#: Lookup buckets: float32 magnitudes in [0, 1] by their top 19 bits (exponent and
#: 10 mantissa bits), so a bucket spans 0.1% of its value, less than any gap
#: between neighbouring thresholds (1.4% at least): each holds at most one.
BUCKET_SHIFT = 13
BUCKETS = (0x3F800000 >> BUCKET_SHIFT) + 1  # up to the bits of 1.0


@functools.cache
def _bucket_tables(signed: bool) -> tuple[np.ndarray, ...]:
    thresholds = _thresholds(signed)
    mirrored = -thresholds[::-1]
    bits = np.arange(BUCKETS + 1, dtype=np.int32) << BUCKET_SHIFT
    edges = bits.view(np.float32)  # each bucket's start, and the last one's end
    # (int32 indices: half the memory traffic of int64)
    below_positive = np.searchsorted(thresholds, edges, side="left").astype(np.int32)
    below_negative = np.searchsorted(mirrored, edges, side="left").astype(np.int32)
    for table in (below_positive, below_negative):
        assert int(np.diff(table).max()) <= 1  # at most one threshold inside a bucket
    inf = np.array([np.inf], dtype=np.float32)
    tables = (
        below_positive[:-1],
        np.concatenate([thresholds, inf]),
        below_negative[:-1],
        np.concatenate([mirrored, inf]),
    )
    for table in tables:
        table.flags.writeable = False
    return tables


def bucket_tables(signed: bool) -> tuple[np.ndarray, ...]:
    """Per bucket of ``|s|``: how many thresholds lie below its start, for s ≥ 0 and s < 0.

    ``(below_positive, thresholds, below_negative, mirrored)``, the threshold
    arrays padded with ``inf``. A binary search over 255 thresholds per
    element is slow on CPU; two small gathers and two comparisons give the
    same index. With ``u = |s|`` and ``b`` its bucket (``bits(u) >>
    BUCKET_SHIFT``, at most ``BUCKETS - 1``), the nearest code of ``s ≥ 0``
    is ``n = below_positive[b]`` plus ``thresholds[n] < u``, and of ``s < 0``
    it is 255 minus the mirrored thresholds at or below ``u``:
    ``n = below_negative[b]`` plus ``mirrored[n] <= u``.
    """
    return _bucket_tables(signed)


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


#: Entries that round with the *low* 16 bits of another entry's hash (whose top 16
#: bits that entry takes): a rule's two moments cost one hash per element, not two.
#: The two halves of ``h(i xor k)`` are independent uniform 16-bit numbers when ``k``
#: is (``h`` is a bijection of 32-bit words), so each rounding stays unbiased and the
#: two entries' roundings stay uncorrelated. Any other entry has a hash of its own.
ROUNDING_PARTNERS = {
    "exp_avg_sq": "exp_avg",  # Adam, AdamW, NAdam, RAdam, Yogi, Adan
    "exp_inf": "exp_avg",  # Adamax
    "exp_avg_var": "exp_avg",  # AdaBelief
    "acc_delta": "square_avg",  # Adadelta
    "momentum_buffer": "square_avg",  # RMSprop with momentum
    "pre_grad": "exp_avg_diff",  # Adan
}


def rounding_stream(key: str) -> str:
    """The entry whose hash ``key`` rounds with: its partner, or ``key`` itself."""
    return ROUNDING_PARTNERS.get(key, key)


def noise_shift(key: str) -> int:
    """Where ``key``'s 16 bits sit in its hash: 16 (the top half) or 0 (a partner's low half)."""
    return 0 if key in ROUNDING_PARTNERS else 16


def entry_salt(seed: int, position: int, key: str) -> int:
    """The part of :func:`stream_key` fixed for one state entry of one parameter.

    Partners (:data:`ROUNDING_PARTNERS`) share the salt of the entry they round with.
    """
    name = rounding_stream(key)
    return int(mix32(mix32(mix32(seed + 0x9E3779B9) ^ position) + zlib.crc32(name.encode())))


def step_salt(step: int) -> int:
    """The part of :func:`stream_key` fixed for one step."""
    return int(mix32(step + 0x632BE5AB))


def stream_key(seed: int, position: int, key: str, step: int) -> int:
    """The key ``k`` of the rounding bits of entry ``key`` of parameter ``position`` at ``step``.

    The same for two partners (:data:`ROUNDING_PARTNERS`): they take the two
    halves of one hash.
    """
    return entry_salt(seed, position, key) ^ step_salt(step)
