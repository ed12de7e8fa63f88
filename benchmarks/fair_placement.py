"""Give every implementation in a benchmark row the same kind of physical memory.

A step over 16M elements runs up to a quarter slower on physically scattered
4 KiB pages than on pages that lie in order (``page_placement.py``), and which
pages a tensor gets depends on when it is allocated: memory a process freed
comes back scattered, and goes to whoever allocates next. Built one after the
other, the first implementation of a row takes what the rows before it (or a
bandwidth probe) freed, and the last gets fresh pages.

:func:`interleave` allocates the tensors of all implementations tensor by
tensor, the implementations' order rotated at every tensor, so each one gets
every k-th piece of whatever memory is free: the same mix. State that an
optimizer creates in its first step is placed the same way through
placeholders (:func:`interleave` them, then free one implementation's just
before its first step, so its state reuses them). :func:`contiguous_share`
measures the result from ``/proc/self/pagemap``.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np
import torch

PAGE = mmap.PAGESIZE
T = TypeVar("T")
STEPS = np.arange(4)  # a group's frames, each one after the one before


def interleave(
    owners: int, items: int, make: Callable[[int, int], T], start: int = 0
) -> list[list[T]]:
    """``make(owner, item)`` for every item and owner, item by item: ``result[owner][item]``.

    At item ``i`` the owners take their turn starting from owner ``(start + i) %
    owners``, so none of them is always the first (or last) to take memory; with
    few items, ``start`` (varied from row to row) decides who goes first.
    """
    built: list[dict[int, T]] = [{} for _ in range(owners)]
    for item in range(items):
        for turn in range(owners):
            owner = (start + item + turn) % owners
            built[owner][item] = make(owner, item)
    return [[own[i] for i in range(items)] for own in built]


def contiguous_share(tensors: Iterable[torch.Tensor]) -> float | None:
    """Share of 16 KiB-aligned groups of 4 pages that are physically contiguous and aligned.

    An AMD core covers such a group with one TLB entry. ``None`` where the frame
    numbers cannot be read (not root, not Linux, a CUDA tensor) or there is no group.
    """
    groups = good = known = 0
    try:
        with open("/proc/self/pagemap", "rb") as pagemap:
            for t in tensors:
                if t.device.type != "cpu" or t.is_sparse or t.numel() == 0:
                    continue
                first = t.data_ptr() // PAGE
                last = (t.data_ptr() + t.numel() * t.element_size() - 1) // PAGE
                pagemap.seek(first * 8)
                entries = np.frombuffer(pagemap.read(8 * (last - first + 1)), dtype=np.uint64)
                frames = (entries & np.uint64((1 << 55) - 1)).astype(np.int64)
                known += bool(frames.any())  # (all 0 without the right to read frame numbers)
                start = -first % 4  # the first page that begins an aligned group of 4
                whole = (len(frames) - start) // 4
                if whole <= 0:
                    continue
                runs = frames[start : start + 4 * whole].reshape(whole, 4)
                good += int(((runs[:, 0] % 4 == 0) & (runs - runs[:, :1] == STEPS).all(1)).sum())
                groups += whole
    except OSError:
        return None
    return good / groups if groups and known else None


def state_tensors(optimizer: Any, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The per-element state ``optimizer`` keeps for ``params`` (not its scalars)."""
    found = []
    for p in params:
        for value in optimizer.state.get(p, {}).values():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                found.append(value)
    return found
