"""First-step latency of the fused path: compiled from scratch, then from torch's on-disk cache.

Usage::

    python benchmarks/compile_latency.py                 # Adam and RMSprop, CPU
    python benchmarks/compile_latency.py --algorithms NAdam --numel 4000000

Each measurement runs in a fresh Python process (``--child``) so nothing is
shared in memory. The first process of an algorithm gets an empty
``TORCHINDUCTOR_CACHE_DIR``: it pays tracing, code generation and the C++ (or
Triton) compiler. The second process gets the same directory: Inductor's FX
graph cache serves the compiled kernel and only Dynamo's tracing remains. The
table gives the time of the first fused step (the second ``step()``; the first
one creates the state eagerly), the steady step after it, and the eager step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def child(name: str, numel: int) -> None:
    import torch

    import adaptim

    params = [torch.nn.Parameter(torch.randn(numel // 10)) for _ in range(10)]
    for p in params:
        p.grad = torch.randn_like(p)
    times = {}
    for label, fused in (("eager", False), ("fused", True)):
        optimizer = getattr(adaptim, name)([p for p in params], fused=fused)
        optimizer.step()  # creates the state
        start = time.perf_counter()
        optimizer.step()  # fused: builds the buckets and compiles (or loads) the kernel
        times[f"{label} first"] = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(5):
            optimizer.step()
        times[f"{label} steady"] = (time.perf_counter() - start) / 5
    print(json.dumps(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algorithms", nargs="+", default=["Adam", "RMSprop"])
    parser.add_argument("--numel", type=int, default=1 << 20)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.numel)
        return
    print(
        f"{'algorithm':<10} {'cache':<6} {'first fused step':>17} {'steady fused':>13} {'steady eager':>13}"
    )
    for name in args.algorithms:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            for label in ("cold", "warm"):
                output = subprocess.run(
                    [sys.executable, __file__, "--child", name, "--numel", str(args.numel)],
                    env=env, capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                times = json.loads(output.strip().splitlines()[-1])
                print(
                    f"{name:<10} {label:<6} {times['fused first']:16.2f}s "
                    f"{times['fused steady'] * 1e3:11.2f}ms {times['eager steady'] * 1e3:11.2f}ms"
                )


if __name__ == "__main__":
    main()
