"""The C square root (:mod:`adaptim.torch._mkl_sqrt`) against MKL's over all float32 patterns.

``python benchmarks/mkl_sqrt_sweep.py [--float64 N]``: every one of the 2^32 float32 bit
patterns in chunks of 2^24 (MKL's main loop; lengths not a multiple of 16 reach its tail
code), NaN bits included, then ``N`` random float64 patterns plus edge patterns (every
exponent and sign with structured mantissas). One thread; prints the mismatches.
"""

from __future__ import annotations

import argparse
import ctypes
import time
from collections.abc import Callable

import torch

from adaptim.torch import _mkl_sqrt


def _mkl(dtype: torch.dtype) -> Callable[..., None]:
    address = _mkl_sqrt.vml_sqrt(dtype)
    assert address is not None, "torch has no MKL here"
    function: Callable[..., None] = ctypes.CFUNCTYPE(
        None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong
    )(address)
    return function


def _mismatches(dtype: torch.dtype, values: torch.Tensor) -> torch.Tensor:
    mkl, ours = _mkl(dtype), _mkl_sqrt.tile_sqrt(dtype)
    assert ours is not None
    expected, got = torch.empty_like(values), torch.empty_like(values)
    mkl(values.numel(), values.data_ptr(), expected.data_ptr(), _mkl_sqrt.VML_MODE)
    ours(values.numel(), values.data_ptr(), got.data_ptr())
    integer = torch.int32 if dtype == torch.float32 else torch.int64
    return values[(expected.view(integer) != got.view(integer))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--float64", type=int, default=10**8)
    parser.add_argument("--skip-float32", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("emulation:", {d: _mkl_sqrt.emulation(d) for d in (torch.float32, torch.float64)})
    start, bad = time.perf_counter(), 0
    chunk = 1 << 24
    for k in range(0 if args.skip_float32 else 1 << 8):
        bits = torch.arange(k * chunk, (k + 1) * chunk, dtype=torch.int64).to(torch.int32)
        values = bits.view(torch.float32)
        bad += _mismatches(torch.float32, values).numel()
        # (a ragged length: the last 7 go through MKL's tail code)
        bad += _mismatches(torch.float32, values[: 1000 * 16 + 7]).numel()
    print(f"float32: {bad} mismatches, {time.perf_counter() - start:.0f} s")
    generator = torch.Generator().manual_seed(1)
    bad, done = 0, 0
    while done < args.float64:
        n = min(1 << 24, args.float64 - done)
        high = torch.randint(-(2**31), 2**31, (n,), generator=generator, dtype=torch.int64)
        low = torch.randint(0, 2**32, (n,), generator=generator, dtype=torch.int64)
        values = ((high << 32) | low).view(torch.float64)
        bad += _mismatches(torch.float64, values).numel()
        done += n
    exponents = torch.arange(1 << 12, dtype=torch.int64) << 52  # every sign and exponent
    mantissas = torch.cat(
        [
            torch.tensor([0, 1, 2, 3, (1 << 52) - 1, (1 << 51), (1 << 51) - 1, (1 << 51) + 1]),
            torch.randint(0, 1 << 52, (312,), generator=generator),
            (1 << torch.arange(52)) - 1,
        ]
    )
    edges = (exponents[:, None] | mantissas[None, :]).flatten().view(torch.float64)
    for length in (edges.numel(), 13):
        bad += _mismatches(torch.float64, edges[:length]).numel()
    print(f"float64: {bad} mismatches in {done} random and {edges.numel()} edge patterns")


if __name__ == "__main__":
    main()
