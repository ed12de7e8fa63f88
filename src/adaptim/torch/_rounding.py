"""Stochastic rounding to bfloat16 with counter-based random bits (see :mod:`._lowmem`).

The 16 random bits of element ``i`` of state entry ``key`` of the parameter
at position ``j`` (its index in ``state_dict``) written at step ``t`` are the
top 16 bits of ``h(i xor k)``: ``h`` is :func:`mix32`, a 32-bit
xorshift-multiply mixer (a bijection of [0, 2³²)), and ``k`` is
:func:`stream_key` of ``(seed, j, key, t)``. Nothing but those numbers is
needed, so the native loop (:mod:`._lowmem_native`) computes the very same
bits element by element, and a resumed run draws what an uninterrupted one
would have drawn.
"""

from __future__ import annotations

import zlib

import torch

#: The mixer's odd multipliers: below 2³¹, so that a 32-bit value times one fits
#: a signed int64 and torch's integer arithmetic computes what C's uint32 does.
MIX_MULTIPLIERS = (0x7FEB352D, 0x1B873593)
_MASK32 = 0xFFFFFFFF


def mix32(x: int) -> int:
    """The 32-bit xorshift-multiply mixer ``h`` on a Python int (a bijection of [0, 2³²))."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * MIX_MULTIPLIERS[0]) & _MASK32
    x ^= x >> 15
    x = (x * MIX_MULTIPLIERS[1]) & _MASK32
    return x ^ (x >> 16)


def entry_salt(seed: int, position: int, key: str) -> int:
    """The part of :func:`stream_key` fixed for one state entry of one parameter."""
    return mix32(mix32(mix32(seed + 0x9E3779B9) ^ position) + zlib.crc32(key.encode()))


def step_salt(step: int) -> int:
    """The part of :func:`stream_key` fixed for one step."""
    return mix32(step + 0x632BE5AB)


def stream_key(seed: int, position: int, key: str, step: int) -> int:
    """The key ``k`` of the rounding bits of entry ``key`` of parameter ``position`` at ``step``."""
    return entry_salt(seed, position, key) ^ step_salt(step)


def rounding_noise(numel: int, stream: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The 16 random bits of elements ``0..numel-1`` in key ``stream``: ``h(i xor k) >> 16`` (int32)."""
    x = torch.arange(numel, dtype=torch.int64, device=device)
    x.bitwise_xor_(stream).bitwise_and_(_MASK32)
    for shift, multiplier in zip((16, 15), MIX_MULTIPLIERS, strict=True):
        x.bitwise_xor_(x >> shift).mul_(multiplier).bitwise_and_(_MASK32)
    return x.bitwise_xor_(x >> 16).bitwise_right_shift_(16).to(torch.int32)


def stochastic_round_bf16(x: torch.Tensor, stream: int) -> torch.Tensor:
    """``x`` (float32) rounded to bfloat16, up or down with probability by distance: unbiased.

    ``stream`` (:func:`stream_key`) picks the random bits; element ``i`` of
    the flattened ``x`` uses :func:`rounding_noise`'s ``i``-th.
    """
    bits = x.contiguous().view(torch.int32)
    noise = rounding_noise(x.numel(), stream, x.device).view(x.shape)
    # Adding below bf16's last mantissa bit and truncating rounds the magnitude
    # up exactly when the noise reaches past the dropped fraction.
    rounded = ((bits + noise) & -65536).view(torch.float32)
    return torch.where(torch.isnan(x), x, rounded).to(torch.bfloat16)
