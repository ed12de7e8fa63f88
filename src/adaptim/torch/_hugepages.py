"""The native loop's state tensors in transparent huge pages (Linux).

One step of a large model streams every state tensor once through one core
per thread. With one thread the core, not the memory, sets the pace: it keeps
a bounded number of cache misses in flight, and with 4 KiB pages each stream
costs a TLB miss, and a restart of the hardware prefetcher, every 4 KiB.
Backed by 2 MiB pages, the state streams cost neither. The kernel gives
anonymous memory 2 MiB pages only where asked (``madvise(MADV_HUGEPAGE)``,
under the common ``transparent_hugepage=madvise`` setting) and only for whole
aligned 2 MiB ranges, which a state tensor of a few hundred KiB allocated by
``malloc`` never is.

:func:`adopt` therefore moves a partition's element-wise state into one
anonymous mapping advised for huge pages, once, when its native kernel is
first bound. Only the optimizer's own state moves: parameters and gradients
stay where the user, autograd or a framework put them, and torch.optim's
state (or another optimizer's) is never touched. Each tensor keeps its
Python identity (``Tensor.set_``) and gets a storage of exactly its own size
(``torch.frombuffer``), so ``torch.save`` of one state tensor writes its bytes
only, and ``state_dict``, ``deepcopy`` and ``share_memory_`` behave as with
torch's own allocation. The mapping is unmapped when the last of its tensors
is freed. Nothing moves where it could be observed: a tensor that is a view,
that shares its storage with another tensor or process, that is pinned, or
that is not a plain dense CPU tensor keeps its allocation.

Off unless ``ADAPTIM_HUGEPAGES=1``: the move costs a second first touch of
the whole state, and on virtual machines that hand free 2 MiB blocks back to
the host (virtio-balloon free page reporting) each huge page then faults in
through the host. Measured on the 16M / 100-tensor workload (AMSGrad, 192 MB
of state, a 2-core VM under load): the first step took 3.2–4.4 s instead of
0.75–1.2 s, for a steady-state gain of 1.09–1.23× (AMSGrad), about 1.04×
(AdamW, Adamax) and none for the one-state rules (SGD-momentum, Adagrad).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence

import torch

#: Huge page size of x86-64 and of arm64 with 4 KiB base pages.
HUGE_PAGE = 2 << 20

#: A partition's state below this many bytes keeps torch's allocation: it
#: would fill at most a huge page or two, and mostly sits in the caches anyway.
MIN_BYTES = 8 << 20

#: Each tensor starts on a cache line.
_ALIGN = 64

_ADVICE = getattr(mmap, "MADV_HUGEPAGE", None)
_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)


def _movable(t: torch.Tensor) -> bool:
    """Whether ``t`` owns its whole storage and nothing else can see it move."""
    if (
        type(t) is not torch.Tensor
        or t.device.type != "cpu"
        or t.layout != torch.strided
        or t.requires_grad
        or t.is_inference()
        or t.is_pinned()
        or not t.is_contiguous()
        or t.storage_offset() != 0
    ):
        return False
    storage = t.untyped_storage()
    # One reference from ``t`` and one from ``storage`` here: no view, no other tensor;
    # not in shared memory either (another process must find it where it is).
    return (
        not storage.is_shared()
        and storage.nbytes() == t.numel() * t.element_size()
        and _USE_COUNT is not None
        and _USE_COUNT(storage._cdata) == 2
    )


def adopt(tensors: Sequence[torch.Tensor]) -> int:
    """Move the movable ``tensors`` into one mapping advised for huge pages; return how many moved.

    Their values and Python identity are kept (their storage is replaced).
    Nothing moves unless ``ADAPTIM_HUGEPAGES=1``, nor when the platform has
    no ``MADV_HUGEPAGE``, when the
    movable tensors hold less than :data:`MIN_BYTES`, or when the mapping or
    the advice is refused.
    """
    if _ADVICE is None or os.environ.get("ADAPTIM_HUGEPAGES") != "1":
        return 0
    movable = [t for t in tensors if t.numel() > 0 and _movable(t)]
    sizes = [-(-t.numel() * t.element_size() // _ALIGN) * _ALIGN for t in movable]
    total = sum(sizes)
    if total < MIN_BYTES:
        return 0
    try:
        # Private: a shared anonymous mapping is shmem, which huge pages rarely back.
        arena = mmap.mmap(-1, total + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        # The mapping is 4 KiB-aligned: start at the first 2 MiB boundary inside it.
        base = torch.frombuffer(arena, dtype=torch.uint8, count=1).data_ptr()
        start = -base % HUGE_PAGE
        arena.madvise(_ADVICE, start, -(-total // mmap.PAGESIZE) * mmap.PAGESIZE)
    except (OSError, ValueError):
        return 0
    offset = start
    for t, size in zip(movable, sizes, strict=True):
        moved = torch.frombuffer(arena, dtype=t.dtype, count=t.numel(), offset=offset)
        moved.copy_(t.reshape(-1))
        t.set_(moved.untyped_storage(), 0, t.shape, t.stride())
        offset += size
    return len(movable)
