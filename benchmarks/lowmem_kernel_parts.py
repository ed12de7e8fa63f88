"""What each part of the 8-bit Adam kernel costs: the kernel against copies of itself with one part cut.

``adaptim.Adam(params, state_bits=8)`` steps a workload on the native path;
its kernel's C source is then edited into *probes*, each compiled and timed
interleaved with the kernel itself on the same tensors, in the same thread
split (medians; the ratio is probe time over kernel time):

* ``no-divider``: the square root dropped and the division by a value turned
  into a multiply (what ``vsqrtps``/``vdivps`` cost, on the unit they share);
* ``no-encode``: the blocks' codes not written (what encoding both moments
  costs; the stored codes stay as they were, so every step decodes the same);
* ``decode-twice``: each block decoded twice (one more decode: its cost);
* ``no-prefetch``: the look-ahead requests off (``PREFETCH_BLOCKS``);
* ``scalar-update``: the block's update as scalar C, its divisions on the
  divider (without ``ADAPTIM_UPDATE_VECTORS``, :mod:`._lowmem_vector`).

The probes' results are wrong by design; only their times mean something.
With one thread the clock is the process's CPU time, which a loaded machine
disturbs least (``--clock wall`` for wall time); with more it is wall time.
Ratios only.

Run: ``python benchmarks/lowmem_kernel_parts.py [--numel N] [--tensors N]
[--threads 1 2] [--repeats N] [--probes no-divider ...]``
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import adaptim
from adaptim.torch import _lowmem_native, _native, _partition

_DIVISION = re.compile(r"^(\s+const T v\d+ = v\d+) / (v\d+;)$")
_DECODE = re.compile(r"^(\s+decode_[SU]\(.*\);)$")
_QUANTIZE = re.compile(r"^(\s+)(quantize_[SU]\(.*\);)$")


def _edit(source: str, pattern: re.Pattern[str], replace: Callable[[re.Match[str]], str]) -> str:
    lines = source.splitlines()
    hits = [k for k, line in enumerate(lines) if pattern.match(line)]
    if not hits:
        raise SystemExit(f"probe: no line matches {pattern.pattern}")
    for k in hits:
        lines[k] = replace(pattern.match(lines[k]))  # type: ignore[arg-type]
    return "\n".join(lines) + "\n"


def _no_divider(source: str) -> str:
    source = source.replace("sqrtf(", "(")
    return _edit(source, _DIVISION, lambda m: f"{m.group(1)} * {m.group(2)}")


def _decode_twice(source: str) -> str:
    barrier = ' __asm__ volatile("" ::: "memory");'
    return _edit(source, _DECODE, lambda m: m.group(1) + barrier + m.group(1).strip())


def _no_encode(source: str) -> str:
    return _edit(source, _QUANTIZE, lambda m: f"{m.group(1)}if (0) {m.group(2)}")


def _no_prefetch(source: str) -> str:
    if "if (far && " not in source:
        raise SystemExit("probe: the kernel has no look-ahead")
    return source.replace("if (far && ", "if (0 && ")


def _scalar_update(source: str) -> str:
    if "#define ADAPTIM_UPDATE_VECTORS 1" not in source:
        raise SystemExit("probe: the kernel has no vector update")
    return source.replace("#define ADAPTIM_UPDATE_VECTORS 1", "")


PROBES: dict[str, Callable[[str], str]] = {
    "scalar-update": _scalar_update,
    "no-divider": _no_divider,
    "no-encode": _no_encode,
    "decode-twice": _decode_twice,
    "no-prefetch": _no_prefetch,
}


def captured_launch(numel: int, tensors: int) -> tuple[Any, tuple[int, ...], list[Any], str]:
    """8-bit Adam stepped natively; its launch, the launch's last arguments, params, source."""
    seen: dict[str, Any] = {}
    original = _partition.NativeLaunch.__call__

    def spy(self: Any, grad_ptrs: list[int], slots: list[float], *extra: int) -> None:
        seen["launch"], seen["extra"] = self, extra
        original(self, grad_ptrs, slots, *extra)

    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(numel, generator=generator)) for _ in range(tensors)]
    optimizer = adaptim.Adam(params, lr=1e-3, state_bits=8)
    _partition.NativeLaunch.__call__ = spy  # type: ignore[method-assign]
    try:
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(numel, generator=generator) * 1e-2
            optimizer.step()
    finally:
        _partition.NativeLaunch.__call__ = original  # type: ignore[method-assign]
    if "launch" not in seen:
        raise SystemExit(f"no native step ({optimizer.fused_status()})")
    function = seen["launch"]._bound[0]
    (source,) = [k.source for k in _lowmem_native._KERNELS.values() if k.function is function]
    return seen["launch"], seen["extra"], params, source


def caller(launch: Any, extra: tuple[int, ...], function: Any) -> Callable[[int], None]:
    """``function`` called as ``launch`` calls its kernel (step counters left alone)."""

    def call(threads: int) -> None:
        _, count, address, table, _, offsets = launch._bound
        threads_arg = launch._table.threads(threads)
        function(count, address, launch._slot_address, *table, threads_arg, 0, offsets, *extra)

    return call


def load(source: str) -> Any:
    """``source`` compiled as :mod:`._lowmem_native` compiles its kernels."""
    import ctypes

    function: Any = _native._load(source)
    function.argtypes = [*function.argtypes, ctypes.c_void_p, ctypes.c_uint32]
    return function


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numel", type=int, default=160_000, help="elements per tensor")
    parser.add_argument("--tensors", type=int, default=100)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--probes", nargs="+", default=list(PROBES), choices=PROBES)
    parser.add_argument(
        "--clock", choices=("auto", "wall"), default="auto", help="auto: CPU time with one thread"
    )
    args = parser.parse_args()
    launch, extra, params, source = captured_launch(args.numel, args.tensors)
    runners = {"kernel": caller(launch, extra, launch._bound[0])}
    for name in args.probes:
        runners[name] = caller(launch, extra, load(PROBES[name](source)))
    total = args.numel * args.tensors
    for threads in args.threads:
        torch.set_num_threads(threads)
        wall = threads > 1 or args.clock == "wall"
        clock = time.perf_counter if wall else time.process_time
        times: dict[str, list[float]] = {k: [] for k in runners}
        order = random.Random(0)
        for _ in range(args.repeats):
            for label in order.sample(list(runners), len(runners)):
                start = clock()
                runners[label](threads)
                times[label].append(clock() - start)
        kernel = statistics.median(times["kernel"])
        print(f"{total:,} elements, {threads} thread(s): kernel {kernel * 1e9 / total:.3f} ns/el")
        for label in args.probes:
            probe = statistics.median(times[label])
            print(
                f"  {label:13s} {probe * 1e9 / total:.3f} ns/el, {probe / kernel:5.3f}x the kernel"
            )
    del params


if __name__ == "__main__":
    main()
