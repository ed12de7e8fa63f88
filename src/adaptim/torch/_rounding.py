"""Stochastic rounding to bfloat16 with counter-based random bits (see :mod:`._lowmem`).

The 16 random bits of element ``i`` of state entry ``key`` of the parameter
at position ``j`` (its index in ``state_dict``) written at step ``t`` are
16 bits of ``h(i xor k)``: ``h`` is :func:`mix32`, a 32-bit
xorshift-multiply mixer (a bijection of [0, 2³²)), and ``k`` is
:func:`stream_key` of ``(seed, j, key, t)``; an entry takes the top half,
its partner (``exp_avg_sq`` beside ``exp_avg``: :data:`ROUNDING_PARTNERS`)
the low half of the same hash (:func:`noise_shift`). Nothing but those numbers is
needed, so the native loop (:mod:`._lowmem_native`) computes the very same
bits element by element, and a resumed run draws what an uninterrupted one
would have drawn.
"""

from __future__ import annotations

import torch

# The hash is shared with the NumPy front-end (one definition, the same bits):
from adaptim.algorithms._state_codes import (
    MIX_MULTIPLIERS,
    ROUNDING_PARTNERS,
    entry_salt,
    mix32,
    noise_shift,
    rounding_stream,
    step_salt,
    stream_key,
)

__all__ = [
    "MIX_MULTIPLIERS",
    "ROUNDING_PARTNERS",
    "entry_salt",
    "mix32",
    "noise_shift",
    "rounding_noise",
    "rounding_stream",
    "step_salt",
    "stochastic_round_bf16",
    "stream_key",
]


def rounding_noise(
    numel: int,
    stream: int,
    device: torch.device | str = "cpu",
    shift: int = 16,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """The 16 random bits of elements ``0..numel-1`` (or of ``indices``) in key ``stream`` (int32).

    ``(h(i xor k) >> shift) & 0xFFFF``: the hash's top half (``shift=16``) or
    its low half (``shift=0``, a partner entry's: :func:`noise_shift`).
    ``indices`` (int64) name the elements otherwise: a shard's global indices
    (:func:`._lowmem_shards.global_indices`).
    """
    if indices is None:
        x = torch.arange(numel, dtype=torch.int64, device=device).bitwise_xor_(stream)
    else:
        x = indices.bitwise_xor(stream)
    mixed: torch.Tensor = mix32(x)
    return ((mixed >> shift) & 0xFFFF).to(torch.int32)


def stochastic_round_bf16(
    x: torch.Tensor, stream: int, shift: int = 16, indices: torch.Tensor | None = None
) -> torch.Tensor:
    """``x`` (float32) rounded to bfloat16, up or down with probability by distance: unbiased.

    ``stream`` (:func:`stream_key`) and ``shift`` (:func:`noise_shift`) pick
    the random bits; element ``i`` of the flattened ``x`` uses
    :func:`rounding_noise`'s ``i``-th, or that of ``indices[i]`` when given.
    """
    bits = x.contiguous().view(torch.int32)
    noise = rounding_noise(x.numel(), stream, x.device, shift, indices).view(x.shape)
    # Adding below bf16's last mantissa bit and truncating rounds the magnitude
    # up exactly when the noise reaches past the dropped fraction.
    rounded = ((bits + noise) & -65536).view(torch.float32)
    return torch.where(torch.isnan(x), x, rounded).to(torch.bfloat16)
