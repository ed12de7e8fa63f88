"""What checking the step counters each step costs the default loop (review14).

A partition mirrors ``step`` (and scalar state) on the host; since review14 it
checks them against the tensors every step (``Partition.counters_hold``, one C
call), so that a count set by hand is followed. This times the default loop
(``zero_grad``, fresh gradients, ``step``) with the check and with it replaced
by ``lambda: True`` (a second optimizer's partitions), alternating the two in the
same process, and prints the
median ratio. Run: ``PYTHONPATH=src python benchmarks/counter_check_cost.py``.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

import adaptim

ROUNDS, STEPS = 41, 50


def loop(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> float:
    grads = [torch.randn_like(p) for p in params]
    start = time.perf_counter()
    for _ in range(STEPS):
        optimizer.zero_grad()
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
    return (time.perf_counter() - start) / STEPS


def main() -> None:
    for name, shapes in {
        "mlp 64-32-10 (4 tensors)": [(32, 64), (32,), (10, 32), (10,)],
        "100 tensors of 256": [(256,)] * 100,
    }.items():
        for cls in (adaptim.Adam, adaptim.NAdam):
            runs = {}
            for checked in (True, False):
                params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
                optimizer = cls(params)
                loop(optimizer, params)  # (partitions built)
                if not checked:  # the same optimizer with the check cut, on its own partitions
                    for partition in optimizer._engine.groups[0].partitions:
                        partition.counters_hold = lambda: True  # type: ignore[method-assign]
                runs[checked] = (optimizer, params)
            times: dict[bool, list[float]] = {True: [], False: []}
            for round_ in range(ROUNDS):
                for checked in (True, False) if round_ % 2 else (False, True):
                    times[checked].append(loop(*runs[checked]))
            with_check, without = (statistics.median(times[k]) for k in (True, False))
            print(
                f"{name:26} {cls.__name__:6} step {without * 1e6:7.1f} us, "
                f"with the check {with_check / without:.3f}x"
            )
    print(f"{os.getloadavg()[0]:.2f} load average")


if __name__ == "__main__":
    main()
