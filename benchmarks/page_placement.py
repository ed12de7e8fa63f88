"""Where a tensor's pages lie in physical memory, and what it does to a 16M step.

Usage::

    python benchmarks/page_placement.py                  # SGD-momentum and Adagrad, 1 thread
    python benchmarks/page_placement.py --rounds 41 --threads 2

The 16M / 100-tensor workload of ``step_speed.py``, its parameters, gradients
and state placed three ways in anonymous mappings: pages first touched in
order (the kernel then tends to hand out physically consecutive pages), in a
random order (physically scattered, as memory a process freed and took again
often is), and advised for 2 MiB pages. adaptim's default ``step()`` and
torch.optim's fused one run on the *same* tensors (both optimizers hold the
same state tensors), interleaved, and the script prints the medians and
torch/adaptim. Run as root, it also prints the share of 16 KiB groups of
pages that are physically contiguous and aligned (``/proc/self/pagemap``),
which an AMD core can cover with one TLB entry.
"""

from __future__ import annotations

import argparse
import mmap
import random
import statistics
import time
from typing import Any

import numpy as np
import torch
from fair_placement import contiguous_share

import adaptim

NUMEL, TENSORS = 160_000, 100
PAGE = mmap.PAGESIZE
#: algorithm -> (class name, settings, state key)
ALGORITHMS = {
    "sgd-momentum": ("SGD", {"lr": 1e-3, "momentum": 0.9}, "momentum_buffer"),
    "adagrad": ("Adagrad", {}, "sum"),
}


def placed(order: str, keep: list[mmap.mmap]) -> list[torch.Tensor]:
    """``TENSORS`` tensors in one mapping, its pages first touched in ``order``."""
    stride = NUMEL * 4 + 3 * PAGE + 192  # tensors start at varied offsets in their pages
    size = stride * TENSORS + (2 << 20)
    arena = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    keep.append(arena)
    if order == "2 MiB":
        arena.madvise(mmap.MADV_HUGEPAGE)
    pages = list(range(size // PAGE))
    if order == "scattered":
        random.Random(len(keep)).shuffle(pages)
    raw = np.frombuffer(arena, dtype=np.uint8)
    for page in pages:
        raw[page * PAGE] = 0
    base = torch.frombuffer(arena, dtype=torch.uint8)
    return [base[i * stride : i * stride + NUMEL * 4].view(torch.float32) for i in range(TENSORS)]


def optimizers(
    algorithm: str, params: list[torch.Tensor], grads: list[torch.Tensor], state: list[torch.Tensor]
) -> dict[str, Any]:
    """adaptim's default and torch's fused optimizer over ``params``, sharing ``state``."""
    name, settings, key = ALGORITHMS[algorithm]
    leaves = [torch.nn.Parameter(p) for p in params]
    for p, g in zip(leaves, grads, strict=True):
        p.grad = g
    built = {
        "adaptim": getattr(adaptim, name)(leaves, **settings),
        "torch fused": getattr(torch.optim, name)(leaves, **settings, fused=True),
    }
    for optimizer in built.values():
        optimizer.step()
        for p, s in zip(leaves, state, strict=True):
            s.copy_(optimizer.state[p][key])
            optimizer.state[p][key] = s
        optimizer.step()  # adaptim binds its loop to the state it now holds
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--algorithms", nargs="+", choices=list(ALGORITHMS), default=list(ALGORITHMS)
    )
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep: list[mmap.mmap] = []
    generator = torch.Generator().manual_seed(0)
    for algorithm in args.algorithms:
        print(f"\n{algorithm}, 16M float32 in 100 tensors, {args.threads} thread(s), ms (median)")
        for order in ("in order", "scattered", "2 MiB"):
            params, grads, state = (placed(order, keep) for _ in range(3))
            for t in (*params, *grads):
                t.copy_(torch.randn(NUMEL, generator=generator))
            built = optimizers(algorithm, params, grads, state)
            times: dict[str, list[float]] = {label: [] for label in built}
            for _ in range(args.rounds):
                for label in random.sample(list(built), len(built)):
                    start = time.perf_counter()
                    built[label].step()
                    times[label].append(time.perf_counter() - start)
            ms = {label: statistics.median(t) * 1e3 for label, t in times.items()}
            shares = [contiguous_share(ts) for ts in (params, grads, state)]
            contiguous = (
                ""
                if None in shares
                else " contiguous 16K groups "
                + "/".join(f"{s:.0%}" for s in shares if s is not None)
            )
            print(
                f"  {order:<10} adaptim {ms['adaptim']:.2f}  torch fused {ms['torch fused']:.2f}  torch/adaptim {ms['torch fused'] / ms['adaptim']:.2f}{contiguous}"
            )
            keep.clear()


if __name__ == "__main__":
    main()
