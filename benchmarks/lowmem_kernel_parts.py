"""What each part of the 8-bit Adam kernel costs: the kernel against copies of itself with one part cut.

``adaptim.Adam(params, state_bits=8)`` steps a workload on the native path;
its kernel's C source is then edited into *probes*, each compiled and timed
interleaved with the kernel itself on the same tensors, in the same thread
split (medians; the ratio is probe time over kernel time):

* ``no-divider``: the square root dropped and the division by a value turned
  into a multiply (what ``vsqrtps``/``vdivps`` cost, on the unit they share;
  with the vector update, the root and ``div_v``);
* ``no-encode``: the blocks' codes not written (what encoding both moments
  costs; the stored codes stay as they were, so every step decodes the same);
* ``decode-twice``: each block decoded twice (one more decode: its cost);
* ``no-prefetch``: the look-ahead requests off (``PREFETCH_BLOCKS``);
* ``scalar-update``: the block's update as scalar C, its divisions on the
  divider (without ``ADAPTIM_UPDATE_VECTORS``, :mod:`._lowmem_vector`; a kernel
  of steps past the caches has none).

The probes' results are wrong by design; only their times mean something.
With one thread the clock is the process's CPU time, which a loaded machine
disturbs least (``--clock wall`` for wall time); with more it is wall time.
Ratios only.

Run: ``python benchmarks/lowmem_kernel_parts.py [--numel N] [--tensors N]
[--threads 1 2] [--repeats N] [--probes no-divider ...]``
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

import _launches  # (a sibling module)
import torch

import adaptim
from adaptim.torch import _lowmem_native, _native

_DIVISION = re.compile(r"^(\s+const T v\d+ = v\d+) / (v\d+;)$")
_VECTOR_DIVISION = re.compile(r"div_v\((v\d+), (v\d+)\)")
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
    source = source.replace("sqrtf(", "(").replace("sqrt_c(v", "(v")
    source = _VECTOR_DIVISION.sub(r"\1 * \2", source)  # (the vector update's, where there is one)
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


def _scalar_update(source: str) -> str | None:
    if "#define ADAPTIM_UPDATE_VECTORS 1" not in source:
        return None  # (steps past the caches, or a rule that keeps the scalar update)
    return source.replace("#define ADAPTIM_UPDATE_VECTORS 1", "")


PROBES: dict[str, Callable[[str], str | None]] = {
    "scalar-update": _scalar_update,
    "no-divider": _no_divider,
    "no-encode": _no_encode,
    "decode-twice": _decode_twice,
    "no-prefetch": _no_prefetch,
}


def captured_launch(numel: int, tensors: int) -> tuple[Any, tuple[int, ...], list[Any], str]:
    """8-bit Adam stepped natively; its launch, the launch's last arguments, params, source."""
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(numel, generator=generator)) for _ in range(tensors)]
    optimizer = adaptim.Adam(params, lr=1e-3, state_bits=8)
    launch, extra = _launches.capture(optimizer, params, scale=1e-2)
    function = launch._bound[0]
    (source,) = [k.source for k in _lowmem_native._KERNELS.values() if k.function is function]
    return launch, extra, params, source


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
    runners = {"kernel": _launches.caller(launch, launch._bound[0], extra)}
    probes = []
    for name in args.probes:
        edited = PROBES[name](source)
        if edited is None:
            print(f"({name}: does not apply to this kernel)")
            continue
        runners[name] = _launches.caller(launch, load(edited), extra)
        probes.append(name)
    total = args.numel * args.tensors
    for threads in args.threads:
        wall = threads > 1 or args.clock == "wall"
        medians = _launches.interleaved_medians(runners, threads, args.repeats, wall)
        kernel = medians["kernel"]
        print(f"{total:,} elements, {threads} thread(s): kernel {kernel * 1e9 / total:.3f} ns/el")
        for label in probes:
            probe = medians[label]
            print(
                f"  {label:13s} {probe * 1e9 / total:.3f} ns/el, {probe / kernel:5.3f}x the kernel"
            )
    del params


if __name__ == "__main__":
    main()
