"""Column mean squares of matrices in one native pass, bit for bit as torch's Adafactor has them.

Adafactor's column statistic is
``torch.linalg.vector_norm(g, dim=-2, keepdim=True).square_().div_(R)``
(torch's ``torch.norm(grad, dim=-2)``). ATen reduces that strided axis with its
generic, unvectorised reduction: about ten times slower per element than the
norm of a row, and the largest single cost of Adafactor's step on matrices of
a few hundred rows. Its order is simple: each column's squares are summed in
the tensor's dtype, row after row (``acc = acc + x * x``, no multiply-add, the
work split between threads by columns only), then ``sqrt``. This module does
the same sums in a loop that walks the matrix row by row, many columns at a
time, so the result is ATen's to the bit on any thread count
(``tests/test_fused_runs.py`` checks it on drawn shapes).

A matrix with one column (an ``N x 1`` weight) is an inner reduction for ATen,
summed in another order; it, and anything not a contiguous float32/float64
CPU tensor, keeps torch's own call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np
import torch

from adaptim.torch import _fuse

#: Columns one work item sums together (the accumulators stay in registers and L1).
COLUMNS = 64

_SOURCE = f"""#include <math.h>
#include <stdint.h>
#include <stdlib.h>
void adaptim_column_ms(int64_t n, const int64_t* shape, void* const* arrays, int threads) {{
  /* shape: batches, rows, columns per tensor; arrays: n inputs, then n outputs */
  int64_t* first = (int64_t*)malloc(sizeof(int64_t) * (size_t)(n + 1));
  first[0] = 0;
  for (int64_t t = 0; t < n; ++t)
    first[t + 1] = first[t] + shape[3 * t] * ((shape[3 * t + 2] + {COLUMNS} - 1) / {COLUMNS});
  const int64_t items = first[n];
  int64_t largest = 0;
  for (int64_t t = 0; t < n; ++t) {{
    const int64_t size = shape[3 * t] * shape[3 * t + 1] * shape[3 * t + 2];
    largest = size > largest ? size : largest;
  }}
  #pragma omp parallel for num_threads(threads) schedule(static) if(items > 1 && largest >= {_fuse.PARALLEL_MIN_NUMEL})
  for (int64_t item = 0; item < items; ++item) {{
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {{ const int64_t mid = (lo + hi + 1) / 2; if (first[mid] <= item) lo = mid; else hi = mid - 1; }}
    const int64_t t = lo, rows = shape[3 * t + 1], cols = shape[3 * t + 2];
    const int64_t per_batch = (cols + {COLUMNS} - 1) / {COLUMNS};
    const int64_t b = (item - first[t]) / per_batch;
    const int64_t c0 = ((item - first[t]) % per_batch) * {COLUMNS};
    const int64_t width = cols - c0 < {COLUMNS} ? cols - c0 : {COLUMNS};
    const T* x = (const T*)arrays[t] + b * rows * cols + c0;
    T* out = (T*)arrays[n + t] + b * cols + c0;
    T acc[{COLUMNS}] = {{0}};
    for (int64_t r = 0; r < rows; ++r) {{
      const T* row = x + r * cols;
      #pragma omp simd
      for (int64_t j = 0; j < width; ++j) acc[j] = acc[j] + row[j] * row[j];
    }}
    for (int64_t j = 0; j < width; ++j) {{
      const T norm = SQRT(acc[j]);
      out[j] = (norm * norm) / (T)rows;
    }}
  }}
  free(first);
}}
"""

_lock = threading.Lock()
_FUNCTIONS: dict[torch.dtype, Callable[..., None] | None] = {}
_TYPES = {torch.float32: ("float", "sqrtf"), torch.float64: ("double", "sqrt")}


def source(dtype: torch.dtype) -> str:
    ctype, sqrt = _TYPES[dtype]
    return f"typedef {ctype} T;\n#define SQRT {sqrt}\n" + _SOURCE


def _function(dtype: torch.dtype) -> Callable[..., None] | None:
    with _lock:
        if dtype not in _FUNCTIONS:
            _FUNCTIONS[dtype] = _fuse.load(source(dtype), "adaptim_column_ms", 4)
        return _FUNCTIONS[dtype]


def _native_ok(x: torch.Tensor, dtype: torch.dtype) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == dtype
        and x.ndim >= 2
        and x.shape[-1] >= 2
        and x.numel() > 0
        and x.is_contiguous()
    )


def column_mean_squares(
    tensors: Sequence[torch.Tensor], fallback: Callable[[torch.Tensor, int], torch.Tensor]
) -> list[torch.Tensor]:
    """``fallback(x, -2)`` (the rule's ``xp.mean_square``) of each tensor, natively where it may."""
    if not tensors:
        return []
    dtype = tensors[0].dtype
    chosen = [i for i, x in enumerate(tensors) if _native_ok(x, dtype)] if dtype in _TYPES else []
    function = (
        _function(dtype)
        if chosen and sum(tensors[i].numel() for i in chosen) >= _fuse.FUSE_MIN_NUMEL
        else None
    )
    if function is None:
        return [fallback(x, -2) for x in tensors]
    results: list[torch.Tensor | None] = [None] * len(tensors)
    shape = np.empty((len(chosen), 3), dtype=np.int64)
    pointers = np.empty(2 * len(chosen), dtype=np.int64)
    for k, i in enumerate(chosen):
        x = tensors[i]
        rows, cols = x.shape[-2], x.shape[-1]
        out = x.new_empty((*x.shape[:-2], 1, cols))
        shape[k] = (x.numel() // (rows * cols), rows, cols)
        pointers[k], pointers[len(chosen) + k] = x.data_ptr(), out.data_ptr()
        results[i] = out
    function(len(chosen), shape.ctypes.data, pointers.ctypes.data, torch.get_num_threads())
    return [r if r is not None else fallback(x, -2) for r, x in zip(results, tensors, strict=True)]
