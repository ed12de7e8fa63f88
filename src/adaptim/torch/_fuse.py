"""Fuse a run of element-wise operations of a replay plan into one native CPU loop, bit for bit.

The multi-tensor replay (:mod:`._replay`) calls one ATen kernel per recorded
operation, so a chain such as Adafactor's tail
(:math:`g^2`, the ``lerp`` into :math:`V`, the floor at :math:`\\epsilon_1^2`,
``rsqrt``, :math:`\\times g`) reads and writes a parameter-sized buffer five
times, and opens one parallel region per tensor and operation. Where the plan
has host or per-tensor values in the middle (``xp.rms``, the row and column
means) the rule as a whole cannot become a :mod:`._native` kernel, but the
element-wise chains between them can.

This module finds such *runs* (consecutive element-wise operations of
:data:`FUSABLE`) and compiles each into one C loop over all the tensors of a
chunk, in blocks, in one OpenMP region: every operand is read once, the
values the rest of the plan needs are written once. Each operation is written
as the ATen CPU kernel the replay would call computes it, so the result is
the replay's to the bit (checked by ``tests/test_fused_runs.py``):

* ``a + b``, ``a - b``, ``a * b``, ``a / b`` and ``-a``: one IEEE operation
  each, in the tensor's dtype, scalars rounded to it first;
* ``rsqrt``: ``1 / sqrt(x)``, two correctly rounded steps, as ATen's ``rsqrt``;
* ``sqrt``: MKL's root, as ATen's (not the correctly rounded one), where
  :func:`._mkl_sqrt.emulated` holds in both dtypes: a run with one is written
  on vectors with the root inlined (:func:`._native_vector.vector_pass`);
  elsewhere ``sqrt`` ends a run;
* ``lerp`` and ``add(alpha=)``: fused multiply-adds (``lerp`` anchored at the
  nearer end), as ATen's vectorised kernels;
* ``clip``: ``clamp_min`` then ``clamp_max`` (a NaN bound is ignored, a NaN
  value kept).

The C is compiled with ``-ffp-contract=off``, so the compiler adds no
multiply-add of its own. On a CPU without FMA instructions ATen's default
kernels do not fuse either; there the replay stays unfused (the loop is
only built when ``__FMA__`` is defined). Anything else a run meets (another
device or dtype, a non-contiguous tensor, a per-tensor operand with more than
one element, no C compiler) leaves the plan on its multi-tensor lines, which
are generated next to the fused call.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from adaptim.torch import _native, _native_vector
from adaptim.torch._mkl_sqrt import emulated
from adaptim.torch._trace import Ref, Structure

#: Operations with a C form that is ATen's CPU result to the bit (see the module docstring).
#: ``sqrt`` only with MKL's root (:func:`._native_vector.run_loop`): ATen's float32 ``sqrt`` is not
#: correctly rounded (17% of results differ from C's ``sqrtf`` by an ulp), its ``rsqrt`` is
#: ``1 / sqrt`` exactly.
FUSABLE = frozenset({"add", "sub", "mul", "div", "neg", "rsqrt", "lerp", "axpy", "clip"})


#: ``sqrt`` joins runs where the loop computes ``torch.sqrt``'s bits.
def _sqrt_fusable() -> bool:
    return emulated(torch.float32) and emulated(torch.float64)


#: The operand that must be the element-wise array (ATen's ``self``); the others may be scalars.
_COMMUTATIVE = frozenset({"add", "mul"})
#: A chunk smaller than this stays on the multi-tensor lines: the call's set-up
#: (pointer tables, a thread team) costs about what the fused passes save.
FUSE_MIN_NUMEL = 1 << 15
#: Elements per work item of the loop.
BLOCK = 16_384
#: A chunk whose largest tensor is smaller than this runs on the calling thread alone:
#: ATen runs an operation on such a tensor serially (its ``GRAIN_SIZE``), so the loop
#: opens no parallel region where torch's own step would open none (on a loaded
#: machine each region waits for a descheduled thread: measured 0.2x on 1,000 tensors
#: of 4k with 2 threads when chunks of them went parallel).
PARALLEL_MIN_NUMEL = 32_768

_CTYPES = {torch.float32: "float", torch.float64: "double"}


@dataclass(frozen=True)
class Run:
    """Operations ``[start, stop)`` of a structure, ``fused`` among them element-wise."""

    start: int
    stop: int
    fused: tuple[int, ...]
    #: Other operations inside the range (host arithmetic on values from before the run).
    hoisted: tuple[int, ...]


def _fusable(structure: Structure, kinds: Sequence[str], index: int) -> bool:
    op, args = structure.ops[index]
    if kinds[index] != "element" or op not in FUSABLE | ({"sqrt"} if _sqrt_fusable() else set()):
        return False
    arrays = [structure.kind_of(a, kinds) for a in args if a[0] in ("input", "node")]
    if not all(kind in ("element", "reduced", "tensor", "host") for kind in arrays):
        return False
    if op not in _COMMUTATIVE and structure.kind_of(args[0], kinds) != "element":
        return False  # ``s - x``, ``s / x``: the replay's reversed forms round differently
    # A weight, bound or alpha per element would be another ATen kernel.
    scalars = {"lerp": args[2:], "axpy": args[2:], "clip": args[1:]}.get(op, ())
    return all(structure.kind_of(a, kinds) != "element" for a in scalars)


def _per_tensor_alone(structure: Structure, kinds: Sequence[str], index: int) -> bool:
    """Whether a lone operation would otherwise run tensor by tensor: an ``axpy`` whose
    ``alpha`` is a host value per tensor (LAMB's and Adafactor's update ``p += a u``).

    The multi-tensor replay has no multi-tensor kernel for it (one ATen call per
    tensor, each its own parallel region on a large tensor); the loop makes it one
    call, and one parallel region, per chunk.
    """
    op, args = structure.ops[index]
    return op == "axpy" and structure.kind_of(args[2], kinds) == "host"


def find_runs(structure: Structure, skip: frozenset[int] = frozenset()) -> list[Run]:
    """Maximal runs of at least two fusable element-wise operations (or one, see
    :func:`_per_tensor_alone`), none through ``skip``.

    A run may step over an operation that is not element-wise when that
    operation reads nothing the run computes (``eps**2`` on the host between
    two element-wise steps): it is emitted before the run. ``skip`` holds the
    operations of other runs (:mod:`._fuse_axes`).
    """
    kinds = structure.kinds()
    runs: list[Run] = []
    fused: list[int] = []
    hoisted: list[int] = []
    start = 0

    def close() -> None:
        if len(fused) >= 2 or (len(fused) == 1 and _per_tensor_alone(structure, kinds, fused[0])):
            last = fused[-1] + 1
            runs.append(Run(start, last, tuple(fused), tuple(h for h in hoisted if h < last)))
        fused.clear()
        hoisted.clear()

    for index, (_, args) in enumerate(structure.ops):
        members = set(fused)
        if index in skip:
            close()
        elif _fusable(structure, kinds, index):
            if not fused:
                start = index
            fused.append(index)
        elif (
            fused
            and kinds[index] != "element"
            and not any(a[0] == "node" and a[1] in members for a in args)
        ):
            hoisted.append(index)
        else:
            close()
    close()
    return runs


def _literal(value: float) -> str:
    if math.isnan(value):
        return "(T)NAN"
    if math.isinf(value):
        return "(T)INFINITY" if value > 0 else "-(T)INFINITY"
    return f"(T){float(value)!r}"


@dataclass(frozen=True)
class Operands:
    """What a fused run reads and writes, in the order the generated call passes them."""

    #: Element-wise arrays read (inputs of the structure or earlier nodes).
    elements: tuple[Ref, ...]
    #: Per-tensor arrays of one element each (0-d values, Adafactor's (1, 1) scale).
    tensors: tuple[Ref, ...]
    #: Host values, one Python float per tensor.
    hosts: tuple[Ref, ...]
    #: Nodes of the run the rest of the plan reads.
    outputs: tuple[int, ...]
    #: Per-axis vectors read by ``axis_piece`` (:mod:`._fuse_axes` runs only).
    vectors: tuple[Ref, ...] = ()


def operands(structure: Structure, run: Run, live: Sequence[int]) -> Operands:
    kinds = structure.kinds()
    members = set(run.fused)
    reads: dict[str, list[Ref]] = {"element": [], "tensor": [], "host": []}
    for index in run.fused:
        for arg in structure.ops[index][1]:
            if arg[0] == "node" and arg[1] in members:
                continue
            if arg[0] in ("input", "node"):
                kind = structure.kind_of(arg, kinds)
                bucket = reads["tensor" if kind == "reduced" else kind]
                if arg not in bucket:
                    bucket.append(arg)
    return Operands(
        tuple(reads["element"]), tuple(reads["tensor"]), tuple(reads["host"]), tuple(live)
    )


def c_expression(op: str, a: Sequence[str], suffix: str) -> str:
    """The C of one :data:`FUSABLE` operation on the operands' C texts (``suffix``: ``f`` for float)."""
    if op in ("add", "sub", "mul", "div"):
        symbol = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[op]
        return f"{a[0]} {symbol} {a[1]}"
    if op == "neg":
        return f"-{a[0]}"
    if op == "rsqrt":
        return f"(T)1 / sqrt{suffix}({a[0]})"
    if op == "lerp":
        return f"lerp_t({a[0]}, {a[1]}, {a[2]})"
    if op == "axpy":
        return f"fma{suffix}({a[2]}, {a[1]}, {a[0]})"
    return f"clip_t({a[0]}, {a[1]}, {a[2]})"  # clip


def generate_source(structure: Structure, run: Run, ops: Operands, dtype: torch.dtype) -> str:
    """The C loop of ``run`` for tensors of ``dtype``."""
    suffix = "f" if dtype == torch.float32 else ""
    names: dict[Ref, str] = {}
    for k, ref in enumerate(ops.elements):
        names[ref] = f"e{k}"
    for k, ref in enumerate(ops.tensors):
        names[ref] = f"p{k}"
    for k, ref in enumerate(ops.hosts):
        names[ref] = f"h{k}"

    def text(ref: Ref) -> str:
        if ref in names:
            return names[ref]
        if ref[0] == "node":
            return f"v{ref[1]}"
        if ref[0] == "slot":
            return f"s{ref[1]}"
        return _literal(ref[1])

    vector = any(structure.ops[i][0] == "sqrt" for i in run.fused)
    if vector:  # (MKL's root inlined: every value a vector, the scalars broadcast)
        loop = _native_vector.run_loop(
            [(i, structure.ops[i][0], [text(x) for x in structure.ops[i][1]]) for i in run.fused],
            [(f"e{k}", f"E{k}") for k in range(len(ops.elements))],
            [(f"O{k}", f"v{node}") for k, node in enumerate(ops.outputs)],
        )
    else:
        body = [
            f"      const T v{i} = {c_expression(op, [text(x) for x in args], suffix)};"
            for i in run.fused
            for op, args in [structure.ops[i]]
        ]
        loop = [
            "    #pragma omp simd",
            "    for (int64_t i = begin; i < end; ++i) {",
            *[f"      const T e{k} = E{k}[i];" for k in range(len(ops.elements))],
            *body,
            *[f"      O{k}[i] = v{node};" for k, node in enumerate(ops.outputs)],
            "    }",
        ]
    slots = sorted({x[1] for i in run.fused for x in structure.ops[i][1] if x[0] == "slot"})
    n_e, n_p, n_h = len(ops.elements), len(ops.tensors), len(ops.hosts)
    lines = [
        "#include <math.h>",
        "#include <stdint.h>",
        "#include <stdlib.h>",
        "#ifndef __FMA__",
        '#error "ATen fuses multiply-adds only where the CPU has FMA"',
        "#endif",
        f"typedef {_CTYPES[dtype]} T;",
        *(_native_vector.helpers(dtype) if vector else []),
        f"static inline T lerp_t(T a, T b, T w) {{ return w < (T)0.5 ? fma{suffix}(w, b - a, a)"
        f" : fma{suffix}(w - (T)1, b - a, b); }}",
        "static inline T clip_t(T x, T lo, T hi) {",
        "  const T y = x < lo ? lo : x;",
        "  return y > hi ? hi : y;",
        "}",
        "void adaptim_fused(int64_t n, const int64_t* numel, void* const* arrays,",
        "                   const double* hosts, const double* s, int threads) {",
        *[f"  const T s{k} = (T)s[{k}];" for k in slots],
        "  int64_t* first = (int64_t*)malloc(sizeof(int64_t) * (size_t)(n + 1));",
        "  first[0] = 0;",
        f"  for (int64_t t = 0; t < n; ++t) first[t + 1] = first[t] + (numel[t] + {BLOCK} - 1) / {BLOCK};",
        "  const int64_t blocks = first[n];",
        "  int64_t largest = 0;",
        "  for (int64_t t = 0; t < n; ++t) largest = numel[t] > largest ? numel[t] : largest;",
        f"  #pragma omp parallel for num_threads(threads) schedule(static) if(blocks > 1 && largest >= {PARALLEL_MIN_NUMEL})",
        "  for (int64_t b = 0; b < blocks; ++b) {",
        "    int64_t lo = 0, hi = n - 1;",
        "    while (lo < hi) { const int64_t mid = (lo + hi + 1) / 2; if (first[mid] <= b) lo = mid; else hi = mid - 1; }",
        "    const int64_t t = lo;",
        f"    const int64_t begin = (b - first[t]) * {BLOCK};",
        f"    const int64_t end = begin + {BLOCK} < numel[t] ? begin + {BLOCK} : numel[t];",
        *[f"    const T* E{k} = (const T*)arrays[{k} * n + t];" for k in range(n_e)],
        *[f"    const T p{k} = *(const T*)arrays[{n_e + k} * n + t];" for k in range(n_p)],
        *[f"    const T h{k} = (T)hosts[{k} * n + t];" for k in range(n_h)],
        *[f"    T* O{k} = (T*)arrays[{n_e + n_p + k} * n + t];" for k in range(len(ops.outputs))],
        *loop,
        "  }",
        "  free(first);",
        "}",
    ]
    return "\n".join(lines) + "\n"


_lock = threading.Lock()
_LOADED: dict[tuple[str, str], Callable[..., None] | None] = {}


def load(source: str, symbol: str, arguments: int) -> Callable[..., None] | None:
    """``symbol`` of ``source`` compiled (disk-cached as :mod:`._native`'s kernels), or ``None``.

    ``symbol`` takes an ``int64_t``, then ``arguments - 2`` pointers, then an ``int``.
    ``None`` when there is no compiler or it refuses the source (a CPU without FMA).
    """
    with _lock:
        key = (source, symbol)
        if key in _LOADED:
            return _LOADED[key]
        function = None
        try:
            library = _native.build_library(source, symbol)
            loaded = getattr(ctypes.CDLL(str(library)), symbol)
        except (_native.NativeUnavailable, OSError):
            loaded = None
        if loaded is not None:
            loaded.restype = None
            loaded.argtypes = [ctypes.c_int64, *[ctypes.c_void_p] * (arguments - 2), ctypes.c_int]
            function = loaded
        _LOADED[key] = function
        return function


class FusedRun:
    """One run of a plan: ``usable`` says whether a chunk may take the loop, ``__call__`` runs it."""

    #: Outputs that are per-axis maxima (:mod:`._fuse_axes`), not element-wise arrays.
    maxima: tuple[int, ...] = ()

    def __init__(self, structure: Structure, run: Run, ops: Operands) -> None:
        self.structure = structure
        self.run = run
        self.ops = ops
        self._functions: dict[torch.dtype, Callable[..., None] | None] = {}

    def source(self, dtype: torch.dtype = torch.float32) -> str:
        return generate_source(self.structure, self.run, self.ops, dtype)

    def function(self, dtype: torch.dtype) -> Callable[..., None] | None:
        if dtype not in self._functions:
            self._functions[dtype] = (
                load(self.source(dtype), "adaptim_fused", 6) if dtype in _CTYPES else None
            )
        return self._functions[dtype]

    def allocation(self, node: int, param: str) -> str:
        """How the generated code allocates a fresh output ``node`` for the tensors ``param``."""
        return f"[torch.empty_like(x, memory_format=torch.contiguous_format) for x in {param}]"

    def usable(
        self,
        param: list[torch.Tensor],
        elements: Sequence[list[torch.Tensor]],
        tensors: Sequence[list[torch.Tensor]],
    ) -> bool:
        first = param[0]
        if first.device.type != "cpu" or first.dtype not in _CTYPES:
            return False
        if sum(map(torch.Tensor.numel, param)) < FUSE_MIN_NUMEL:
            return False
        dtype = first.dtype
        for values in elements:
            for t in values:
                if t.dtype != dtype or not t.is_contiguous() or t.device != first.device:
                    return False
        for values in tensors:
            for t in values:
                if t.dtype != dtype or t.numel() != 1 or t.device != first.device:
                    return False
        return self.function(dtype) is not None

    def __call__(
        self,
        param: list[torch.Tensor],
        elements: Sequence[list[torch.Tensor]],
        tensors: Sequence[list[torch.Tensor]],
        hosts: Sequence[list[float]],
        outputs: Sequence[list[torch.Tensor]],
        slots: Sequence[float],
    ) -> None:
        function = self.function(param[0].dtype)
        assert function is not None  # (``usable`` said so)
        count = len(param)
        numel = np.fromiter(map(torch.Tensor.numel, param), dtype=np.int64, count=count)
        pointers = np.fromiter(
            (t.data_ptr() for values in (*elements, *tensors, *outputs) for t in values),
            dtype=np.int64,
        )
        host = np.asarray(hosts, dtype=np.float64).reshape(-1) if hosts else np.zeros(1)
        scalars = np.asarray(slots, dtype=np.float64) if len(slots) else np.zeros(1)
        function(
            count,
            numel.ctypes.data,
            pointers.ctypes.data,
            host.ctypes.data,
            scalars.ctypes.data,
            torch.get_num_threads(),
        )
