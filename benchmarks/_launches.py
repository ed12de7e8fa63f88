"""What the kernel benchmarks share: a native launch captured from a step, replayed and timed.

``native_floor.py`` (a kernel against its copy-through) and
``lowmem_kernel_parts.py`` (the 8-bit kernel against copies with one part
cut) both take the kernel call an optimizer's step makes, call it and
variants of it on the same tensors in the same thread split, and compare
medians of interleaved rounds.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from adaptim.torch import _partition

#: The optimizers of the launches handed out, kept alive for the process (a launch points
#: into its optimizer's state: freed, the kernel would write there).
_KEPT: list[Any] = []


def capture(
    optimizer: Any, params: list[torch.Tensor], steps: int = 3, scale: float = 1.0
) -> tuple[Any, tuple[int, ...]]:
    """Step ``optimizer`` on fresh random gradients; its last native launch and that call's extras."""
    seen: dict[str, Any] = {}
    original = _partition.NativeLaunch.__call__

    def spy(self: Any, grad_ptrs: list[int], slots: list[float], *extra: int) -> None:
        seen["launch"], seen["extra"] = self, extra
        original(self, grad_ptrs, slots, *extra)

    generator = torch.Generator().manual_seed(1)
    _partition.NativeLaunch.__call__ = spy  # type: ignore[method-assign]
    try:
        for _ in range(steps):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator) * scale
            optimizer.step()
    finally:
        _partition.NativeLaunch.__call__ = original  # type: ignore[method-assign]
    if "launch" not in seen:
        raise SystemExit(f"no native step ({optimizer.fused_status()})")
    _KEPT.append(optimizer)
    return seen["launch"], seen["extra"]


def caller(
    launch: Any, function: Callable[..., None], extra: tuple[int, ...] = ()
) -> Callable[[int], None]:
    """``function`` called as ``launch`` calls its kernel (step counters left alone)."""

    def call(threads: int) -> None:
        _, count, address, table, _, offsets = launch._bound
        threads_arg = launch._table.threads(threads)
        function(count, address, launch._slot_address, *table, threads_arg, 0, offsets, *extra)

    return call


def interleaved_medians(
    runners: dict[str, Callable[[int], None]], threads: int, repeats: int, wall: bool
) -> dict[str, float]:
    """Median seconds of each runner over ``repeats`` rounds, each round in a fresh random order.

    ``wall``: wall time; otherwise the process's CPU time (what a loaded machine
    disturbs least with one thread).
    """
    torch.set_num_threads(threads)
    clock = time.perf_counter if wall else time.process_time
    times: dict[str, list[float]] = {k: [] for k in runners}
    order = random.Random(0)
    for _ in range(repeats):
        for label in order.sample(list(runners), len(runners)):
            start = clock()
            runners[label](threads)
            times[label].append(clock() - start)
    return {label: statistics.median(t) for label, t in times.items()}
