"""How far each rule's native kernel runs above the floor of its own memory streams.

For every algorithm named, one optimizer steps a workload (default: 16M
float32 parameters in 100 tensors) on the native path; its kernel is then
timed against a *copy-through* of itself: the same C source with every
written value replaced by the value read from the same buffer (the gradient
added to the first, so that it is still read). Both read and write exactly
the same bytes, on the same tensors, in the same thread split, interleaved
in one process; only the arithmetic differs. A ratio near 1.0 says the
kernel is at its memory floor, and no rewriting of its arithmetic (a cheaper
``max``, ``abs``, division) can make it faster; above 1.0, the arithmetic
costs time.

With one thread the default clock is the process's CPU time, which a loaded
machine disturbs least; with more it is wall time. Ratios only: absolute
times on a shared machine say little.

Run: ``python benchmarks/native_floor.py [--algorithms adamax adam ...] [--numel N]
[--tensors N] [--threads 1 2] [--repeats N]``
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

import _launches  # (a sibling module)
import torch

import adaptim
from adaptim.torch import _native

#: adaptim class and constructor arguments per benchmarked name (the native path forced).
ALGORITHMS: dict[str, tuple[str, dict[str, Any]]] = {
    "adamax": ("Adamax", {}),
    "adam": ("Adam", {}),
    "rmsprop": ("RMSprop", {}),
    "adagrad": ("Adagrad", {}),
    "rprop": ("Rprop", {}),
    "lion": ("Lion", {}),
    "yogi": ("Yogi", {}),
    "adabelief": ("AdaBelief", {}),
}

_READ = re.compile(r"^      const T in(\d+) = (\w+)\[i\];$")
_WRITE = re.compile(r"^      (\w+)\[i\] = .+;$")


def copy_through(source: str) -> str:
    """``source`` with every element write replaced by the value read from that buffer."""
    lines = source.splitlines()
    read = {m.group(2): m.group(1) for m in map(_READ.match, lines) if m}
    grad = read["grad"]
    out, first = [], True
    for line in lines:
        written = _WRITE.match(line)
        if written and written.group(1) in read:
            extra = f" + in{grad}" if first else ""
            line = f"      {written.group(1)}[i] = in{read[written.group(1)]}{extra};"
            first = False
        out.append(line)
    return "\n".join(out) + "\n"


def captured_launch(name: str, numel: int, tensors: int) -> tuple[Any, list[torch.Tensor], str]:
    """An optimizer of ``name`` stepped natively; its kernel's launch, params and source."""
    class_name, settings = ALGORITHMS[name]
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(numel, generator=generator)) for _ in range(tensors)]
    optimizer = getattr(adaptim, class_name)(params, fused=True, **settings)
    launch, _ = _launches.capture(optimizer, params)
    (source,) = optimizer.plans()[0]
    return launch, params, source


def caller(launch: Any, function: Callable[..., None]) -> Callable[[int], None]:
    """``function`` called as ``launch`` calls its kernel (step counters left alone)."""
    return _launches.caller(launch, function)


def ratio(name: str, args: argparse.Namespace) -> dict[int, float]:
    launch, params, source = captured_launch(name, args.numel, args.tensors)
    runners = {
        "kernel": caller(launch, launch._bound[0]),
        "floor": caller(launch, _native._load(copy_through(source))),
    }
    ratios = {}
    for threads in args.threads:
        medians = _launches.interleaved_medians(runners, threads, args.repeats, wall=threads > 1)
        kernel, floor = medians["kernel"], medians["floor"]
        ratios[threads] = kernel / floor
        print(
            f"{name:10s} {threads} thread(s): kernel {kernel * 1e3:7.2f} ms, "
            f"copy-through {floor * 1e3:7.2f} ms, kernel/floor {kernel / floor:5.2f}"
        )
    del params
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--numel", type=int, default=160_000, help="elements per tensor")
    parser.add_argument("--tensors", type=int, default=100)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    for name in args.algorithms:
        ratio(name, args)


if __name__ == "__main__":
    main()
