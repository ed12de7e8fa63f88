"""Fused runs over matrices that read per-axis vectors and keep per-axis maxima, bit for bit.

:mod:`._fuse` compiles runs of element-wise operations. Some rules keep
statistics per axis (:mod:`adaptim.algorithms._axes`): SM3 reads a row value
:math:`\\mu^{(0)}_i` and a column value :math:`\\mu^{(1)}_j` for every element,
and its new accumulators are the row and column maxima of
:math:`\\nu_{ij}`. On the multi-tensor lines each of these is its own pass (and
a Python loop over the tensors); here a run that contains them becomes one loop
over each matrix, row by row:

* ``axis_piece(vector, like, 0)`` is ``vector[i]``, ``axis_piece(vector, like, 1)``
  is ``vector[rows + j]`` (the layout of the per-axis vector);
* ``axis_maxima(x)`` keeps a running maximum per row (written when the row
  ends) and per column (one partial vector per thread, combined at the end).
  Row ``i``'s maximum is written after the last read of ``vector[i]``, the
  column maxima after every read, so the maxima may overwrite the vector
  they replace (the replay writes SM3's new accumulator in place).
  A maximum does not depend on the order it is taken in, so the result is
  the same for any split of the rows between threads (a NaN anywhere gives
  NaN, as ``amax``; the sign of a zero maximum, where ``+0`` and ``-0`` tie, is
  the one exception: no rule here produces ``-0``);
* besides :data:`~._fuse.FUSABLE`, such a run takes comparisons, ``where``,
  ``minimum``/``maximum`` (NaN-propagating, as ATen's) and ``sqrt``. ATen's
  ``sqrt`` is MKL's ``vmsSqrt``/``vmdSqrt`` in high-accuracy mode, which is not
  the correctly rounded square root: the loop takes the square roots of
  tiles of each row with MKL's own algorithm written in C, or where this
  process found that C to differ from ``torch.sqrt`` (another CPU, another
  MKL), with MKL's function itself (:mod:`._mkl_sqrt`); without MKL,
  ``sqrt`` ends a run. Where the engine wanted the native loop (``fused=True``,
  or the default on a large group) and :data:`._native.EXACT_ROOT` is off, the
  loop takes the correctly rounded ``sqrt`` inline instead, as the native loop
  does: the run is then a single vectorised pass (no tiles of roots; on SM3's
  240² matrices about 1.3-1.5x faster than the tiles, measured under load), and
  agrees with ``torch.sqrt``'s bits to rounding.

Only 2-D tensors take the loop (a chunk with another rank, a non-contiguous
operand or a vector of another length runs the multi-tensor lines, generated
next to the call as for :mod:`._fuse`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from adaptim.torch import _fuse
from adaptim.torch._fuse_axes_source import COMPARISONS as _COMPARISONS
from adaptim.torch._fuse_axes_source import generate_source
from adaptim.torch._mkl_sqrt import emulated, vml_sqrt
from adaptim.torch._trace import Ref, Structure

AXIS_OPS = frozenset({"axis_piece", "axis_maxima"})
#: Operations a run with per-axis operands takes besides :data:`~._fuse.FUSABLE` (``sqrt``
#: only where :func:`vml_sqrt` holds).
EXTENDED = frozenset({*_COMPARISONS, "where", "minimum", "maximum"})
_COMMUTATIVE = frozenset({"add", "mul", "minimum", "maximum"})
#: What the multi-tensor lines run tensor by tensor in Python (no ``torch._foreach_*``): a
#: run with one of these takes the loop at any size (SM3's ``where`` on its vectors too).
PER_TENSOR_LINES = AXIS_OPS | {*_COMPARISONS, "where", "minimum"}


@functools.lru_cache(maxsize=256)
def has_axes(structure: Structure) -> bool:
    """Whether ``structure`` reads per-axis vectors or keeps per-axis maxima."""
    return any(op in AXIS_OPS for op, _ in structure.ops)


def _sqrt_fusable() -> bool:
    return vml_sqrt(torch.float32) is not None and vml_sqrt(torch.float64) is not None


@dataclass(frozen=True)
class AxesRun(_fuse.Run):
    """A run with per-axis operands; ``spans`` says what each fused node varies along."""

    #: (node, ``"E"`` element / ``"0"`` row / ``"1"`` column / ``"M"`` per-axis maxima)
    spans: tuple[tuple[int, str], ...] = ()


def _last_uses(structure: Structure) -> dict[int, int]:
    last: dict[int, int] = {}
    for index, (_, args) in enumerate(structure.ops):
        for arg in args:
            if arg[0] == "node":
                last[arg[1]] = index
    for _, ref in (*structure.outputs, *structure.created):
        if ref[0] == "node":
            last[ref[1]] = len(structure.ops)
    return last


def find_runs(structure: Structure, rounded: bool = False) -> list[_fuse.Run]:
    """The runs with per-axis operands (:class:`AxesRun`), then :func:`._fuse.find_runs` in the rest.

    ``rounded``: the loop may take the correctly rounded ``sqrt`` (so ``sqrt`` joins a run
    without MKL too).
    """
    if any(op == "axis_piece" and args[2][1] not in (0, 1) for op, args in structure.ops):
        return _fuse.find_runs(structure)  # (a rank-3 recording: the loop walks matrices only)
    kinds = structure.kinds()
    last = _last_uses(structure)
    allowed = _fuse.FUSABLE | EXTENDED | ({"sqrt"} if rounded or _sqrt_fusable() else set())
    runs: list[_fuse.Run] = []
    spans: dict[int, str] = {}
    hoisted: list[int] = []

    def span_of(ref: Ref) -> str | None:
        if ref[0] == "node" and ref[1] in spans:
            return spans[ref[1]]
        if ref[0] not in ("input", "node"):
            return "S"
        if ref[0] == "node" and structure.ops[ref[1]][0] in _COMPARISONS:
            return None  # (a mask from outside the run: not a value of the dtype)
        return {"element": "E", "tensor": "S", "host": "S"}.get(structure.kind_of(ref, kinds))

    def span(index: int) -> str | None:
        op, args = structure.ops[index]
        if op == "axis_piece":
            vector, like, axis = args
            outside = vector[0] == "input" or (vector[0] == "node" and vector[1] not in spans)
            if outside and structure.kind_of(vector, kinds) == "reduced" and span_of(like) == "E":
                return str(axis[1]) if axis[1] in (0, 1) else None
            return None
        if op == "axis_maxima":
            return "M" if args[0][0] == "node" and spans.get(args[0][1]) == "E" else None
        if op not in allowed:
            return None
        found = [span_of(a) for a in args]
        if None in found or "M" in found or all(f == "S" for f in found):
            return None
        if op not in _COMMUTATIVE and found[0] == "S":
            return None  # ``s - x``: the replay's reversed forms round differently
        scalars = {"lerp": found[2:], "axpy": found[2:], "clip": found[1:]}.get(op, [])
        if any(f != "S" for f in scalars):
            return None
        masks = [a for a in args if a[0] == "node" and structure.ops[a[1]][0] in _COMPARISONS]
        if masks and (op != "where" or masks != [args[0]]):
            return None
        arrays = {f for f in found if f != "S"}
        return "E" if "E" in arrays or arrays == {"0", "1"} else arrays.pop()

    def close() -> None:
        members = sorted(spans)
        stop = members[-1] + 1 if members else 0
        live = [i for i in members if last.get(i, -1) >= stop]
        # (without per-axis operands, a run is worth it where the lines go tensor by tensor)
        useful = any(structure.ops[i][0] in PER_TENSOR_LINES for i in members) and len(members) >= 2
        if useful and all(
            spans[i] == "M" or (spans[i] == "E" and structure.ops[i][0] not in _COMPARISONS)
            for i in live
        ):
            kept = tuple(h for h in hoisted if h < stop)
            runs.append(AxesRun(members[0], stop, tuple(members), kept, tuple(spans.items())))
        spans.clear()
        hoisted.clear()

    for index, (_, args) in enumerate(structure.ops):
        found = span(index)
        if found is not None:
            spans[index] = found
        elif (
            spans
            and kinds[index] != "element"
            and not any(a[0] == "node" and a[1] in spans for a in args)
        ):
            hoisted.append(index)
        else:
            close()
    close()
    covered = frozenset(i for run in runs for i in range(run.start, run.stop))
    return sorted([*runs, *_fuse.find_runs(structure, skip=covered)], key=lambda r: r.start)


def operands(structure: Structure, run: AxesRun, live: Sequence[int]) -> _fuse.Operands:
    """What ``run`` reads (the ``like`` of ``axis_piece`` is only a shape) and writes."""
    members = set(run.fused)
    reads: dict[str, list[Ref]] = {"E": [], "S-tensor": [], "S-host": [], "vector": []}
    kinds = structure.kinds()
    for index in run.fused:
        op, args = structure.ops[index]
        if op == "axis_piece":
            args = args[:1]
        for arg in args:
            if arg[0] not in ("input", "node") or (arg[0] == "node" and arg[1] in members):
                continue
            kind = structure.kind_of(arg, kinds)
            bucket = {"element": "E", "tensor": "S-tensor", "host": "S-host"}.get(kind, "vector")
            if arg not in reads[bucket]:
                reads[bucket].append(arg)
    return _fuse.Operands(
        tuple(reads["E"]),
        tuple(reads["S-tensor"]),
        tuple(reads["S-host"]),
        tuple(live),
        tuple(reads["vector"]),
    )


class FusedAxesRun(_fuse.FusedRun):
    """An :class:`AxesRun`'s loop: ``vectors`` (the per-axis operands) come last."""

    def __init__(
        self, structure: Structure, run: AxesRun, ops: _fuse.Operands, rounded: bool = False
    ) -> None:
        super().__init__(structure, run, ops)
        #: Whether ``sqrt`` is C's correctly rounded one, inlined: one pass, no tiles of roots
        #: (the native path's default); else ``torch.sqrt``'s bits (MKL's algorithm).
        self.rounded = rounded
        self.axes_run = run
        self.maxima = tuple(i for i in ops.outputs if dict(run.spans)[i] == "M")
        #: Whether the run reads per-axis operands (else any tensor is walked as one row).
        self.axes = any(structure.ops[i][0] in AXIS_OPS for i in run.fused)
        #: Whether the loop calls MKL's square root (see :meth:`__call__`).
        self.calls_sqrt = any(structure.ops[i][0] == "sqrt" for i in run.fused)

    def own_sqrt(self, dtype: torch.dtype) -> bool:
        """Whether the loop takes its square roots itself (else it calls MKL's function)."""
        return self.calls_sqrt and not self.rounded and emulated(dtype)

    def source(self, dtype: torch.dtype = torch.float32) -> str:
        own = self.own_sqrt(dtype)
        return generate_source(self.structure, self.axes_run, self.ops, dtype, own, self.rounded)

    def function(self, dtype: torch.dtype) -> Callable[..., None] | None:
        if dtype not in self._functions:
            known = dtype in _fuse._CTYPES
            self._functions[dtype] = (
                _fuse.load(self.source(dtype), "adaptim_axes", 7) if known else None
            )
        return self._functions[dtype]

    def allocation(self, node: int, param: str) -> str:
        """How the generated code allocates a fresh output ``node`` for the tensors ``param``."""
        if node in self.maxima:
            return f"[x.new_empty(sum(x.shape)) for x in {param}]"
        return f"[torch.empty_like(x, memory_format=torch.contiguous_format) for x in {param}]"

    def usable(
        self,
        param: list[torch.Tensor],
        elements: Sequence[list[torch.Tensor]],
        tensors: Sequence[list[torch.Tensor]],
        vectors: Sequence[list[torch.Tensor]] = (),
    ) -> bool:
        first = param[0]
        if first.device.type != "cpu" or first.dtype not in _fuse._CTYPES:
            return False
        if any(p.numel() == 0 for p in param):
            return False
        if self.axes and any(p.ndim != 2 for p in param):
            return False
        single = not self.axes and torch.get_num_threads() > 1  # (a vector is one work item)
        if single and any(p.numel() >= _fuse.PARALLEL_MIN_NUMEL for p in param):
            return False
        dtype = first.dtype
        shapes: list[object] = [p.shape for p in param]
        lengths: list[object] = [sum(p.shape) for p in param]
        seen: set[int] = set()  # (a list passed twice, as an input and an output, is checked once)
        for values, whole in (*((v, True) for v in elements), *((v, False) for v in vectors)):
            if id(values) in seen:
                continue
            seen.add(id(values))
            sizes = [t.shape if whole else t.numel() for t in values]
            if (
                sizes != (shapes if whole else lengths)
                or not all(t.is_contiguous() for t in values)
                or any(t.dtype != dtype or not t.is_cpu for t in values)
            ):
                return False
        for values in tensors:
            for t in values:
                if t.dtype != dtype or t.numel() != 1 or t.device != first.device:
                    return False
        if self.calls_sqrt and not self.rounded and vml_sqrt(dtype) is None:
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
        vectors: Sequence[list[torch.Tensor]] = (),
    ) -> None:
        dtype = param[0].dtype
        function = self.function(dtype)
        assert function is not None  # (``usable`` said so)
        count = len(param)
        sizes = (p.shape if self.axes else (1, p.numel()) for p in param)
        shape = np.fromiter((d for size in sizes for d in size), dtype=np.int64, count=2 * count)
        ordered = [*elements, *vectors, *tensors]
        spans = dict(self.axes_run.spans)
        live = self.ops.outputs
        ordered += [o for o, i in zip(outputs, live, strict=True) if spans[i] != "M"]
        ordered += [o for o, i in zip(outputs, live, strict=True) if spans[i] == "M"]
        pointers = np.fromiter((t.data_ptr() for values in ordered for t in values), dtype=np.int64)
        host = np.asarray(hosts, dtype=np.float64).reshape(-1) if hosts else np.zeros(1)
        scalars = np.asarray(slots, dtype=np.float64) if len(slots) else np.zeros(1)
        extra = np.asarray([0 if self.rounded else vml_sqrt(dtype) or 0], dtype=np.int64)
        threads = torch.get_num_threads()
        arguments = (count, shape.ctypes.data, pointers.ctypes.data, host.ctypes.data)
        if threads == 1 or not self.calls_sqrt or self.rounded or self.own_sqrt(dtype):
            function(*arguments, scalars.ctypes.data, extra.ctypes.data, threads)
            return
        # MKL's square root, called per tile from our threads, checks MKL's own thread
        # count on every call: with more than one (torch.set_num_threads sets MKL's too)
        # the loop ran 2x slower on two threads than on one. Our team keeps ``threads``
        # (the loop's num_threads clause), MKL sees one for the duration of the call.
        torch.set_num_threads(1)
        try:
            function(*arguments, scalars.ctypes.data, extra.ctypes.data, threads)
        finally:
            torch.set_num_threads(threads)
