"""The price of ``torch.sqrt``'s bits: MKL's root emulated in C against the correctly rounded one.

Two side-by-side measurements in one process (alternated, medians, one thread):

* the root alone, ``r = sqrt(q)`` over ``n`` elements repeated in C: the emulation this
  process picked (:func:`adaptim.torch._mkl_sqrt.emulation`), ``vsqrtps``/``vsqrtpd``
  (512-bit with AVX-512, else 256), and MKL's own ``vmsSqrt``/``vmdSqrt`` (one ctypes call a
  repeat); ns an element;
* the native loop of Adam, RMSprop and Adagrad on 100 tensors (``benchmarks/native_floor.py``'s
  captured launch) built with ``_native.EXACT_ROOT`` on (the root inlined) and off (``sqrt``).

Run: ``python benchmarks/mkl_sqrt_speed.py [--sizes 4096 1048576] [--rounds 31]``. Ratios
on a shared machine: state the load average next to them.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from collections.abc import Callable
from unittest import mock

import torch

from adaptim.torch import _mkl_sqrt, _native

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import native_floor  # (a sibling script)

_BENCH = """
#include <stdint.h>
typedef {ctype} T;
{tile}
#ifdef __AVX512F__
#define VSQRT(q, r) _mm512_storeu_{p}(r, _mm512_sqrt_{p}(_mm512_loadu_{p}(q)))
enum {{ W = 64 / sizeof(T) }};
#else
#define VSQRT(q, r) _mm256_storeu_{p}(r, _mm256_sqrt_{p}(_mm256_loadu_{p}(q)))
enum {{ W = 32 / sizeof(T) }};
#endif
void bench_emulated(int64_t reps, int64_t n, const T* q, T* r) {{
  for (int64_t k = 0; k < reps; ++k) mkl_sqrt_tile(n, q, r);
}}
void bench_rounded(int64_t reps, int64_t n, const T* q, T* r) {{  /* (n: a multiple of W) */
  for (int64_t k = 0; k < reps; ++k)
    for (int64_t i = 0; i < n; i += W) VSQRT(q + i, r + i);
}}
"""


def _load() -> list[str]:
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def _median_ns(runners: dict[str, Callable[[], None]], rounds: int, count: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for label, run in runners.items():
            start = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - start)
    return {k: statistics.median(v) / count * 1e9 for k, v in times.items()}


def root_alone(dtype: torch.dtype, size: int, rounds: int) -> None:
    ctype, p = ("float", "ps") if dtype == torch.float32 else ("double", "pd")
    source = _BENCH.format(ctype=ctype, p=p, tile=_mkl_sqrt.tile_sqrt_source(dtype))
    library = ctypes.CDLL(str(_native.build_library(source, "sqrt_bench")))
    q = torch.rand(size, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 10
    r = torch.empty_like(q)
    reps = max(1, (1 << 24) // size)
    address = _mkl_sqrt.vml_sqrt(dtype)

    def bench(f: Callable[..., None]) -> Callable[[], None]:
        pointers = (ctypes.c_void_p(q.data_ptr()), ctypes.c_void_p(r.data_ptr()))
        return lambda: f(ctypes.c_int64(reps), ctypes.c_int64(size), *pointers)

    runners = {
        label: bench(getattr(library, f"bench_{label}")) for label in ("emulated", "rounded")
    }
    if address is not None:
        vml = ctypes.CFUNCTYPE(
            None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong
        )(address)

        def mkl() -> None:
            for _ in range(reps):
                vml(size, q.data_ptr(), r.data_ptr(), _mkl_sqrt.VML_MODE)

        runners["mkl"] = mkl
    ns = _median_ns(runners, rounds, reps * size)
    line = ", ".join(f"{k} {v:.3f}" for k, v in ns.items())
    print(
        f"root {str(dtype)[6:]:8s} n={size:8d}: ns/element {line}; "
        f"emulated/rounded {ns['emulated'] / ns['rounded']:.2f}"
    )


def in_the_loop(name: str, rounds: int, numel: int) -> None:
    kernels = {}
    for exact in (True, False):
        with mock.patch.object(_native, "EXACT_ROOT", exact):
            launch, params, _ = native_floor.captured_launch(name, numel, 100)
        kernels["exact" if exact else "rounded"] = (
            native_floor.caller(launch, launch._bound[0]),
            params,
        )
    ns = _median_ns({k: (lambda c=c: c(1)) for k, (c, _) in kernels.items()}, rounds, numel * 100)
    print(
        f"{name:8s} {numel * 100:9d} float32, 1 thread: ns/element exact-root {ns['exact']:.3f}, "
        f"sqrt {ns['rounded']:.3f}, ratio {ns['exact'] / ns['rounded']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 1 << 20])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument(
        "--loop-sizes",
        type=int,
        nargs="+",
        default=[2_000, 160_000],
        help="elements per tensor of the loops' 100 (16M: out of cache)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("load average:", _load())
    print("emulation:", {str(d): _mkl_sqrt.emulation(d) for d in (torch.float32, torch.float64)})
    for dtype in (torch.float32, torch.float64):
        for size in args.sizes:
            root_alone(dtype, size, args.rounds)
    for numel in args.loop_sizes:
        for name in ("adam", "rmsprop", "adagrad"):
            in_the_loop(name, args.rounds, numel)
    print("load average:", _load())


if __name__ == "__main__":
    main()
