"""LARS, LAMB and NovoGrad: the default step before and after their norms took ATen's order.

Side by side in one process (one step of each variant in turn, fresh gradients each
step as after ``zero_grad()``, medians), on ``step_speed.py``'s workloads:

* ``small`` (42k parameters in 6 tensors, under ``AUTO_NATIVE_MIN_NUMEL``): ``replay`` is
  what the default ran before (the multi-tensor replay, ``foreach=True``: bit for bit the
  same path), ``default`` what it runs now (the exact native loop, norms in ATen's order);
* ``mlp`` (235k in 6, a large group): ``default`` is the large groups' loop (per-block
  norms in double, split across threads), ``aten norms`` the same loop with its norms
  in ATen's order (each tensor whole on one thread), the choice the large loop did not take,
  and ``exact loop`` the small groups' loop at this size (MKL's root inlined where it is
  emulated, ATen's norms: what ``_native.EXACT_ROOT`` asks for, and what a default that
  takes the exact loop on larger groups would run).

Each later variant is compared with the first: the first's median over its median (> 1:
the later one is faster), then the same of their fastest quarters (25th percentiles:
steadier where other processes take the second core from a two-thread step). Run: ``python benchmarks/norm_order_speed.py [--threads 1 2] [--steps 400]``.
A shared machine: the load average is printed next to each ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import torch

import adaptim
from adaptim.torch import _native, _native_source

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_speed import WORKLOADS  # (a sibling script)

ALGORITHMS = ("LARS", "LAMB", "NovoGrad")


def _aten_norms_everywhere(structure: Any, dtype: torch.dtype, exact: bool | None = None) -> str:
    """``_native.source_for`` with the large loop's norms in ATen's order too."""
    return _native_source.generate_source(structure, dtype, aten_norms=True)


def build(name: str, shapes: list[tuple[int, ...]], variant: str) -> Callable[[], None]:
    """A step of ``adaptim.<name>`` in ``variant`` on fresh gradients (after two warm steps)."""
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
    grads = [torch.randn(s, generator=generator) for s in shapes]
    options = {"foreach": True} if variant == "replay" else {}
    optimizer = getattr(adaptim, name)(params, **options)

    def step() -> None:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()

    _native._KERNELS.clear()  # (each variant binds its own kernel on its first steps)
    patches = {
        "aten norms": mock.patch.object(_native, "source_for", _aten_norms_everywhere),
        "exact loop": mock.patch.object(_native, "EXACT_ROOT", True),
    }
    with patches.get(variant, contextlib.nullcontext()):
        step(), step()
    _native._KERNELS.clear()
    status = optimizer.fused_status()[0]
    expected = "foreach" if variant == "replay" else "native"
    assert status.startswith(expected), (variant, status)
    return step


def compare(
    name: str, workload: str, variants: tuple[str, ...], steps: int
) -> list[tuple[float, float]]:
    """Each variant's median and 25th percentile step time (ms)."""
    runners = [build(name, WORKLOADS[workload], v) for v in variants]
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(steps):
        for k, run in enumerate(runners):
            start = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - start)
    return [(statistics.median(t) * 1e3, statistics.quantiles(t, n=4)[0] * 1e3) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--workloads", nargs="+", default=["small", "mlp"])
    args = parser.parse_args()
    variants = {"small": ("replay", "default"), "mlp": ("default", "aten norms", "exact loop")}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for workload in args.workloads:
            first, *others = variants[workload]
            print(f"\n{workload}, {threads} thread(s): medians (ms), then each against {first}")
            print(f"  {'':9s} {first:>10s} " + " ".join(f"{v:>10s}" for v in others))
            for name in ALGORITHMS:
                (a, a25), *rest = compare(name, workload, variants[workload], args.steps)
                ratios = "  ".join(
                    f"{v}: {a / b:4.2f}x / {a25 / b25:4.2f}x"
                    for v, (b, b25) in zip(others, rest, strict=True)
                )
                load = Path("/proc/loadavg").read_text().split()[0]
                times = " ".join(f"{b:10.3f}" for b, _ in rest)
                print(f"  {name:9s} {a:10.3f} {times}   {ratios}   (load {load}, loaded)")


if __name__ == "__main__":
    main()
