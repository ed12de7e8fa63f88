"""C fragments the generated native loops share: the balanced split, the page walk, step counts.

:mod:`._native_source` (float32/float64 loops, and the vector loop of
:mod:`._native_vector` built on it) and :mod:`._lowmem_native_source` (the
8-bit loop) paste these lines into their C.
"""

from __future__ import annotations

#: C helpers of the balanced split: thread ``part`` of ``parts`` takes the elements
#: ``[share(total, part), share(total, part + 1))`` of the concatenated tensors, the
#: boundaries rounded down to 16 elements (a 64-byte cache line of float32) so that two
#: threads rarely write the same line; ``offsets`` are the tensors' first elements.
RANGES = (
    "static inline int64_t share(int64_t total, int64_t part, int64_t parts) {",
    "  return part == parts ? total : (total / parts * part + total % parts * part / parts) & ~(int64_t)15;",
    "}",
    "static inline int64_t first_tensor(const int64_t* offsets, int64_t n, int64_t at) {",
    "  int64_t lo = 0, hi = n;  /* the first tensor that ends after element ``at`` */",
    "  while (lo < hi) { const int64_t mid = (lo + hi) / 2; if (offsets[mid + 1] <= at) lo = mid + 1; else hi = mid; }",
    "  return lo;",
    "}",
)


#: The balanced split (:meth:`._native_source._Source.element_loop`): the parallel region, each thread's
#: range ``[lo, hi)`` and its loop over the tensors it touches (two braces to close) ...
BALANCED_OPEN = (
    "  #pragma omp parallel num_threads(threads)",
    "  {",
    "  const int64_t parts = omp_get_num_threads(), part = omp_get_thread_num();",
    "  const int64_t lo = share(offsets[n], part, parts);",
    "  const int64_t hi = share(offsets[n], part + 1, parts);",
    "  for (int64_t t = first_tensor(offsets, n, lo); t < n && offsets[t] < hi; ++t) {",
)
#: ... and, inside that loop, the part of tensor ``t`` in the range.
BALANCED_RANGE = (
    "    const int64_t begin = (lo > offsets[t] ? lo : offsets[t]) - offsets[t];",
    "    const int64_t end = (hi < offsets[t + 1] ? hi : offsets[t + 1]) - offsets[t];",
)


#: The element loop's page (bytes), and how many pages ahead of it each stream is asked
#: for (0: one plain loop over the range, without prefetches).
PAGE = 4096
AHEAD = 2


def page_ahead(streams: list[tuple[str, bool]], itemsize: int) -> list[str]:
    """C that walks ``[begin, end)`` a page of elements at a time, first asking for
    each stream's line :data:`AHEAD` pages further (``streams``: the pointers,
    and whether the loop writes through them). It opens two blocks, the inner
    one redeclaring ``begin`` and ``end`` as the page's for the element loop.

    With 4 KiB pages a stream enters a new page every 4 KiB, where the hardware
    prefetcher stops and the core waits for a translation (a two-level page
    walk under a hypervisor) and the page's first lines. With one thread that
    wait sets the pace, the more so when the memory is physically scattered,
    as a process's recycled memory is (no TLB entry then covers more than one
    page). Prefetching two pages ahead, into the outer caches only (hint 1:
    the lines reach L1 when the loop loads them), starts both early.
    Measured with one thread on the 16M / 100-tensor workload, on the same
    memory, under load: SGD-momentum and Adagrad 1.01-1.30x the plain loop's
    speed on 4 KiB pages (physically contiguous or scattered), and unchanged
    within the noise on 2 MiB pages, which have no such waits (0.88-1.10x;
    into L1, hint 3, it cost 5-10% there). Values are bit for bit the plain
    loop's.
    """
    page = PAGE // itemsize
    ahead = AHEAD * page
    hints = [
        f"        __builtin_prefetch({name} + c + {ahead}, {int(write)}, 1);"
        for name, write in streams
    ]
    return [
        f"    for (int64_t c = begin; c < end; c += {page}) {{",
        f"      const int64_t page_end = end - c > {page} ? c + {page} : end;",
        *([f"      if (end - c > {ahead}) {{", *hints, "      }"] if hints else []),
        "      {",
        "      const int64_t begin = c, end = page_end;  /* the loop below walks this page */",
    ]


def count_steps(role: int) -> list[str]:
    """C that adds 1 to each 0-d ``step`` counter (pointer role ``role``) after the update.

    ``step_kind`` (:data:`._native.STEP_KINDS`) says how they are stored; 0: the
    caller counts them.
    """
    return [
        f"  if (step_kind == 1) for (int64_t t = 0; t < n; ++t) *(float*)buffers[{role} * n + t] += 1.0f;",
        f"  if (step_kind == 2) for (int64_t t = 0; t < n; ++t) *(double*)buffers[{role} * n + t] += 1.0;",
    ]
