"""Threads are part of correctness: the native loop and the replay split work across them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from adaptim.torch import _native


@contextlib.contextmanager
def num_threads(count: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)``, then restore the previous count.

    With more than one thread the native loop's grain (one thread per
    :data:`~adaptim.torch._native.GRAIN` elements, as in ATen) drops to one
    element, so that the tests' small tensors really are split across threads.
    """
    before, grain = torch.get_num_threads(), _native.GRAIN
    torch.set_num_threads(count)
    if count > 1:
        _native.GRAIN = 1
    try:
        yield
    finally:
        torch.set_num_threads(before)
        _native.GRAIN = grain
