"""Whole-tensor norms in ATen's order, for the native loop's exact mode (LARS, LAMB, NovoGrad).

The replay and the reference path take a rule's ``xp.norm`` with
``torch.linalg.vector_norm``. For a contiguous float32/float64 CPU tensor of
two or more elements this wheel runs the last-axis norm kernel on one thread,
whatever the thread count (checked up to 16M elements with 1 and 2 threads):
the sum of squares in the tensor's own dtype (float32 accumulates in float, not
double) in the order :data:`._aten_sums.SQUARES` replays, then ``std::sqrt``,
correctly rounded (here ``sqrt`` in double then rounded to ``T``: the same
number). A one-element tensor (0-d included) takes another kernel, whose
result is the element's absolute value (no square to underflow or overflow).

The exact loop's norm pass (:meth:`._native_source._Source.norm_pass`) therefore
walks each tensor on one thread, :data:`CHUNK` elements at a time: it computes
each norm's operand into a buffer that stays in L1, adds the buffer's whole
vectors into ATen's lanes, and on the last chunk finishes the sum as ATen does
(:func:`norm_chunk` in :data:`NORM_CHUNK`). The loop for large groups keeps its
per-block sums in double, which split a tensor across threads.

The order was read off the wheel's results, not its source, so
:func:`holds` checks it against ``torch.linalg.vector_norm`` once per process
and dtype, through the same C; where it fails, :func:`._native.gives_torchs_bits`
says no and small groups of these rules replay, as before.
"""

from __future__ import annotations

import ctypes
import threading
from typing import TYPE_CHECKING

import numpy as np
import torch

from adaptim.torch import _aten_sums

if TYPE_CHECKING:
    from adaptim.torch._native_source import _Source

#: Elements of a tensor the exact norm pass computes before adding them up (a multiple of
#: every ``ATEN_LANES``, so only a tensor's last chunk has a tail): 4 KiB of float32.
CHUNK = 1024

#: The C the norm pass calls once per chunk (after ``typedef ... T`` and
#: :data:`._aten_sums.SQUARES`).
NORM_CHUNK = r"""/* The chunk [c, c + len) of a tensor of `size` elements, computed into `chunk`: its whole
   vectors into ATen's lanes; on the last chunk ATen's tail and root, rounded to T, into
   *norm (a single element: its absolute value, as torch's kernel for one element gives). */
static inline void norm_chunk(Lanes* acc, const T* chunk, int64_t c, int64_t len, int64_t size,
                              double* norm) {
  const int64_t whole = len - len % ATEN_LANES;
  add_vectors(acc, chunk, whole);
  if (c + len != size) return;
  *norm = size == 1 ? fabs((double)chunk[0])  /* (-0 too: +0) */
                    : (double)(T)sqrt((double)finish(*acc, chunk + whole, len - whole));
}
"""


#: The pass's loops: a tensor per thread (its ``size`` elements), then its chunks in order,
#: each ``[begin, end)`` of the pointers moved to the chunk.
TENSOR_OPEN = (
    "  #pragma omp parallel for num_threads(threads) schedule(dynamic, 1)",
    "  for (int64_t t = 0; t < n; ++t) {",
    "    const int64_t size = offsets[t + 1] - offsets[t];",
)
CHUNK_OPEN = "    for (int64_t c = 0; c < size; c += CHUNK) {"
CHUNK_RANGE = "    const int64_t begin = 0, end = size - c < CHUNK ? size - c : CHUNK;"


def aten_pass(source: _Source, norms: list[int]) -> list[str]:
    """The C of one level of ``source``'s ``norms`` in ATen's order: a tensor per thread,
    each chunk's operands computed into their buffers (an input is read where it is),
    then :func:`norm_chunk`, which leaves each norm in ``squares``."""
    structure = source.structure
    operands = [structure.ops[i][1][0] for i in norms]
    arrays = [
        structure.inputs[r[1]] if r[0] == "input" else f"chunk{i}"
        for i, r in zip(norms, operands, strict=True)
    ]
    computed = [(i, r) for i, r in zip(norms, operands, strict=True) if r[0] != "input"]
    head = [f"    Lanes acc{i} = {{0}};" for i in norms]
    head += [f"    T chunk{i}[CHUNK] __attribute__((aligned(64)));" for i, _ in computed]
    tail = [source.write(f"chunk{i}", ref) for i, ref in computed]
    reads = [ref for _, ref in computed]
    lines = source.element_loop(
        source.ancestors(norms), [*tail, "    }"], head, reads, chunked=True
    )
    lines += [
        f"    norm_chunk(&acc{i}, {array}, c, end, size, &squares[t * NN + {source.norm_slot[i]}]);"
        for i, array in zip(norms, arrays, strict=True)
    ]
    return [*lines, "    }", "  }"]


def fragment(dtype: torch.dtype) -> str:
    """The C a norm pass in ATen's order needs, for a source that has ``typedef ... T``."""
    return (
        f"#include <string.h>\n{_aten_sums.header(dtype)}#define CHUNK {CHUNK}\n"
        + _aten_sums.SQUARES
        + NORM_CHUNK
    )


#: Walks each tensor chunk by chunk as the norm pass does, its elements the operand.
_CHECK = r"""
void adaptim_norms(int64_t n, const int64_t* pointers, const int64_t* sizes, double* norms) {
  for (int64_t t = 0; t < n; ++t) {
    const T* x = (const T*)pointers[t];
    Lanes acc = {0};
    norms[t] = 0.0;
    for (int64_t c = 0; c < sizes[t]; c += CHUNK) {
      const int64_t len = sizes[t] - c < CHUNK ? sizes[t] - c : CHUNK;
      norm_chunk(&acc, x + c, c, len, sizes[t], &norms[t]);
    }
  }
}
"""

_CTYPES = {torch.float32: "float", torch.float64: "double"}
_lock = threading.Lock()
_HOLDS: dict[torch.dtype, bool] = {}


def check_source(dtype: torch.dtype) -> str:
    """The C of :func:`holds`' check: :func:`fragment` and a walk over whole tensors."""
    return "#include <math.h>\n#include <stdint.h>\n" + (
        f"typedef {_CTYPES[dtype]} T;\n" + fragment(dtype) + _CHECK
    )


def norms(tensors: list[torch.Tensor]) -> list[float]:
    """Each (contiguous, float32 or float64, one dtype) tensor's norm as the norm pass takes it."""
    from adaptim.torch import _native  # (it builds on this module)

    dtype = tensors[0].dtype
    library = _native.build_library(check_source(dtype), "norms")
    function = ctypes.CDLL(str(library)).adaptim_norms
    function.restype = None
    pointers = np.array([x.data_ptr() for x in tensors], dtype=np.int64)
    sizes = np.array([x.numel() for x in tensors], dtype=np.int64)
    out = np.zeros(len(tensors))
    function(
        ctypes.c_int64(len(tensors)),
        ctypes.c_void_p(pointers.ctypes.data),
        ctypes.c_void_p(sizes.ctypes.data),
        ctypes.c_void_p(out.ctypes.data),
    )
    return [float(x) for x in out]


def holds(dtype: torch.dtype) -> bool:
    """Whether :func:`norms` is ``torch.linalg.vector_norm`` on this wheel for ``dtype``:
    checked once per process on random tensors around every tail and chunk length, large
    ones (more than a thread's grain on several threads), single elements whose square
    underflows or overflows, and small tensors whose sum of squares underflows in float32.
    ``False`` where no compiler builds it."""
    from adaptim.torch import _native

    known = _HOLDS.get(dtype)  # (asked every step of a small group)
    if known is not None:
        return known
    with _lock:
        if dtype not in _HOLDS:
            try:
                _HOLDS[dtype] = _agrees(dtype)
            except (_native.NativeUnavailable, OSError):
                _HOLDS[dtype] = False
        return _HOLDS[dtype]


def _agrees(dtype: torch.dtype) -> bool:
    generator = torch.Generator().manual_seed(0)
    sizes = [*range(0, 80), 1023, 1024, 1025, 2049, 4099, 70_001, 300_001]
    tensors = [torch.randn(n, generator=generator, dtype=dtype) for n in sizes]
    tiny, huge = torch.finfo(dtype).tiny, torch.finfo(dtype).max
    tensors += [torch.tensor(x, dtype=dtype) for x in (tiny, -huge, -0.0, 3.0)]
    tensors += [torch.full((n,), 2 * tiny, dtype=dtype) for n in (2, 5, 37)]
    expected = [torch.linalg.vector_norm(x).item() for x in tensors]
    return norms(tensors) == expected
