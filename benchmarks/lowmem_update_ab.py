"""8-bit Adam's whole step with and without the vector update, beside torch's fused Adam.

Three optimizers on copies of the same parameters, stepped in turns (the
order reversed every round) with fresh gradients: ``adaptim.Adam(...,
state_bits=8)`` with the default kernel (the update on AVX-512 vectors where
it applies, :mod:`adaptim.torch._lowmem_vector`), the same with that update
off (the scalar loop), and ``torch.optim.Adam(fused=True)``. Prints medians and
the median of the paired ratios: a loaded machine moves all three alike.

Run: ``python benchmarks/lowmem_update_ab.py [--workload mlp] [--threads 1] [--rounds 300]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from step_speed import WORKLOADS  # (a sibling script)

import adaptim
from adaptim.torch import _lowmem_native, _lowmem_vector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="mlp", choices=WORKLOADS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    shapes = WORKLOADS[args.workload]
    starts = [torch.randn(s, generator=generator) for s in shapes]
    grads = [torch.randn(s, generator=generator) for s in shapes]
    runs: list[tuple[str, Any, list[torch.Tensor]]] = []
    for label, vector in (("vector", True), ("scalar", False)):
        _lowmem_vector.VECTOR_UPDATE = vector  # (read when the kernel is built: first steps)
        _lowmem_native._KERNELS.clear()
        params = [torch.nn.Parameter(t.clone()) for t in starts]
        runs.append((label, adaptim.Adam(params, state_bits=8), params))
        for _ in range(2):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            runs[-1][1].step()
    _lowmem_vector.VECTOR_UPDATE = True
    params = [torch.nn.Parameter(t.clone()) for t in starts]
    runs.append(("torch fused", torch.optim.Adam(params, fused=True), params))
    times: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    for index in range(args.rounds):
        for label, optimizer, params in runs if index % 2 == 0 else runs[::-1]:
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            start = time.perf_counter()
            optimizer.step()
            times[label].append(time.perf_counter() - start)
    medians = {label: statistics.median(t) * 1e3 for label, t in times.items()}
    paired = statistics.median(a / b for a, b in zip(times["vector"], times["scalar"], strict=True))
    print(
        f"{args.workload}, {args.threads} thread(s): "
        + ", ".join(f"{label} {ms:.3f} ms" for label, ms in medians.items())
        + f"; vector/scalar paired {paired:.3f}; torch/vector "
        f"{medians['torch fused'] / medians['vector']:.3f}, torch/scalar "
        f"{medians['torch fused'] / medians['scalar']:.3f}"
    )


if __name__ == "__main__":
    main()
