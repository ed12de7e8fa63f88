"""torch's Adafactor step on CPU vectors and matrices in three native passes, bit for bit.

torch's for-loop (``torch.optim.Adafactor``, ``foreach=False``) reads a
matrix parameter or its gradient six times a step (the parameter's norm, the
row norms, the column norms, the update ``g / sqrt(V)`` written into a fresh
tensor, its norm, the step), with one ATen call and host read per tensor. The
engine's replay fuses the element-wise tail but keeps the reductions per
tensor, so many small tensors stay bound by calls, and every step allocates
a parameter-sized update. Here a partition of the default rule (the
``torch`` flavor's arithmetic: ``eps1_in_square`` and ``rms_after_decay``
off) whose tensors are contiguous float32/float64 CPU vectors, scalars or
matrices takes one C call, three passes (:mod:`._adafactor_source`; a
matrix of more than ``MEAN_ROWS`` rows: a call a pass, torch's ``mean``
between the first two). (A tensor of rank 3 or more is the stack of its
trailing matrices, as torch factors it: a ``row_var``/``col_var`` slice and a
``mean(row_var)`` per matrix, one norm per tensor.)

0. the gradient's row and column statistics (one read, per matrix), folded
   into ``row_var`` and ``col_var``, then ``mean(row_var)`` floored at
   :math:`\\epsilon_1` (ATen's cascade sum of ``R`` numbers, replayed; past
   ``_adafactor_source.MEAN_ROWS`` rows torch's own ``mean``), and a large
   parameter's norm;
1. the update's norm (vectors: ``variance`` moves here); a tensor of up to
   ``_adafactor_source.KEEP`` elements, and no more than a thread's share of
   the partition (``_adafactor_source.kept``), takes its parameter's norm in the
   same loop and keeps its update in a per-thread buffer (in L2), and is
   stepped right away from the cache: one read of ``p``, ``g`` and the state,
   one write of ``p`` and ``variance``, 20 bytes an element for a vector, the
   least there is; one of up to ``KEEP`` elements but more than a thread's
   share (*shared*: the MLP's first matrix on 2 threads) has its update
   computed on every thread into a buffer of its own first, its norm summed on
   one thread while the others take the kept tensors;
2. the shared tensors' step from their buffer, and larger tensors' step with
   the update recomputed alike, in blocks on every thread: about 24 bytes an
   element for a matrix (32 for a vector) against the loop's 44 and an
   allocation.

The buffers (``Bound.scratch``) live from step to step: memory allocated
afresh each step costs a page fault per 4 KiB (a 256×784 matrix's phase 1:
285 against 190 us).

Every norm is summed in the order of ATen's kernel (``_adafactor_source``),
and every element-wise operation rounds as the ATen kernel torch calls, so the
result is torch's to the bit. The summation orders are a property of the
installed wheel, so they are checked once per process and dtype against
``torch.linalg.vector_norm`` and ``torch.mean`` on random data
(:func:`_order_agrees`); where they
do not hold, or for anything else (other flavors, half types, a
non-contiguous tensor), the engine's replay runs as before.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from adaptim.torch import _adafactor_source, _fuse, _native
from adaptim.torch._adafactor_source import MEAN_ROWS
from adaptim.torch._partition import Partition

#: The flags of ``meta``'s first column (``_adafactor_source``'s enum).
MATRIX, KEPT, SHARED = 1, 2, 4
#: The C's phase that runs the whole step (phases 0, 1 and 2 where they have work) in one call.
WHOLE_STEP = 4
#: The host numbers the C reads (``h`` in ``_adafactor_source``).
HOSTS = 9

_IS_CONTIGUOUS = torch.Tensor.is_contiguous
_lock = threading.Lock()
_FUNCTIONS: dict[torch.dtype, Any] = {}


def _function(dtype: torch.dtype) -> Any:
    """The loaded ``adaptim_adafactor`` for ``dtype``, or ``None`` (no compiler, or the order differs)."""
    with _lock:
        if dtype not in _FUNCTIONS:
            _FUNCTIONS[dtype] = None
            try:
                library = _native.build_library(source(dtype), "adafactor")
                function = ctypes.CDLL(str(library)).adaptim_adafactor
            except (_native.NativeUnavailable, OSError):
                return None
            function.restype = None
            function.argtypes = [
                ctypes.c_int64,
                ctypes.c_int64,
                *[ctypes.c_void_p] * 4,
                ctypes.c_int,
                ctypes.c_void_p,
            ]
            if _order_agrees(function, dtype):
                _FUNCTIONS[dtype] = function
        return _FUNCTIONS[dtype]


def source(dtype: torch.dtype) -> str:
    return _adafactor_source.source(dtype, _fuse.PARALLEL_MIN_NUMEL)


def _order_agrees(function: Any, dtype: torch.dtype) -> bool:
    """Whether the passes' norms (``sum_squares``) are ``torch.linalg.vector_norm``'s, and
    their means (``cascade_sum``) ``torch.mean``'s, on
    random data (sizes around every tail length, and large ones). ATen takes a whole-tensor
    norm on one thread whatever the thread count (the tests check 1 and 2)."""
    generator = torch.Generator().manual_seed(0)
    sizes = [*range(1, 80), 255, 1000, 4099, 8193, MEAN_ROWS, 70_001, 300_001]
    tensors = [torch.randn(n, generator=generator, dtype=dtype).abs() for n in sizes]
    count = len(tensors)
    meta = np.array([(0, 1, 1, x.numel()) for x in tensors], dtype=np.int64).reshape(-1)
    arrays = np.zeros(5 * count, dtype=np.int64)
    arrays[:count] = [x.data_ptr() for x in tensors]
    expected = [torch.linalg.vector_norm(x).item() for x in tensors]
    # (``row_var``'s mean: a column of numbers, torch's call shape)
    means = [x.view(-1, 1).mean(dim=-2).item() for x in tensors if x.numel() <= MEAN_ROWS]
    norms = np.zeros(2 * count)
    hosts = np.zeros(HOSTS)
    pointers = (meta.ctypes.data, arrays.ctypes.data, hosts.ctypes.data, norms.ctypes.data)
    function(count, 3, *pointers, 1, None)
    found_means = norms[count : count + len(means)].tolist()
    return bool(norms[:count].tolist() == expected and found_means == means)


@dataclass
class Bound:
    """A partition's pointers and shapes, kept while its tensors are (the engine rebuilds
    partitions whose parameters or state change)."""

    meta: np.ndarray
    arrays: np.ndarray
    #: (row_var, its floored mean) of each matrix of more than ``MEAN_ROWS`` rows: torch's
    #: ``mean`` (the C computes the others')
    scales: list[tuple[torch.Tensor, torch.Tensor]]
    #: The other matrices' means, which only the C reads and writes (kept alive here).
    means: list[torch.Tensor]
    hosts: np.ndarray
    norms: np.ndarray
    dtype: type[np.floating[Any]]  # the tensors'
    #: The thread count the flags were set for, whether some tensor is not kept (phase 2
    #: steps those), whether phase 0 has work (a matrix's statistics, such a tensor's norm).
    threads: int = 0
    large: bool = False
    first_pass: bool = False
    #: The C's ``scratch`` (the updates phase 1 keeps), and the pointers the C takes.
    scratch: np.ndarray | None = None
    pointers: tuple[int, ...] = ()

    def flag(self, threads: int) -> None:
        """Mark the tensors phase 1 steps (``KEPT``) or computes the update of on every
        thread (``SHARED``: ``_adafactor_source.kept``) for ``threads``; size ``scratch``."""
        meta = self.meta.reshape(-1, 4)
        sizes = meta[:, 1] * meta[:, 2] * meta[:, 3]
        total = int(sizes.sum())
        ways = [_adafactor_source.kept(int(size), total, threads) for size in sizes]
        flags = np.array([{"kept": KEPT, "shared": SHARED}.get(way, 0) for way in ways])
        meta[:, 0] = (meta[:, 0] & MATRIX) | flags
        self.threads, self.large = threads, bool(np.any(flags != KEPT))
        self.first_pass = self.large or bool(np.any(meta[:, 0] & MATRIX))
        largest = int(sizes[flags == KEPT].max(initial=0))
        shared = int(sizes[flags == SHARED].sum())
        self.scratch = np.empty(max(1, largest * threads + shared), dtype=self.dtype)
        self.pointers = (
            self.meta.ctypes.data,
            self.arrays.ctypes.data,
            self.hosts.ctypes.data,
            self.norms.ctypes.data,
        )


def usable(partition: Partition) -> bool:
    """Whether the partition's tensors may take the native passes (options and gradients are
    checked per step)."""
    first = partition.params[0]
    if first.device.type != "cpu" or first.dtype not in (torch.float32, torch.float64):
        return False
    if partition.ndim >= 2:
        keys: tuple[str, ...] = ("row_var", "col_var")
    else:
        keys = ("variance",)
    for p, state in zip(partition.params, partition.states, strict=True):
        if not p.is_contiguous() or p.numel() == 0:
            return False
        for key in keys:
            v = state.get(key)
            if not isinstance(v, torch.Tensor) or v.dtype != p.dtype or not v.is_contiguous():
                return False
    return True


def _bind(partition: Partition) -> Bound:
    params, count = partition.params, len(partition.params)
    meta = np.empty((count, 4), dtype=np.int64)
    arrays = np.zeros(5 * count, dtype=np.int64)
    scales, means = [], []
    for t, (p, state) in enumerate(zip(params, partition.states, strict=True)):
        arrays[t] = p.data_ptr()
        if p.ndim >= 2:
            row_var, col_var = state["row_var"], state["col_var"]
            rows, cols = p.shape[-2], p.shape[-1]
            scale = row_var.new_empty((*p.shape[:-2], 1, 1))  # one per trailing matrix
            if rows > MEAN_ROWS:
                scales.append((row_var, scale))
            else:
                means.append(scale)
            meta[t] = (MATRIX, p.numel() // (rows * cols), rows, cols)
            arrays[2 * count + t] = row_var.data_ptr()
            arrays[3 * count + t] = col_var.data_ptr()
            arrays[4 * count + t] = scale.data_ptr()
        else:
            meta[t] = (0, 1, 1, p.numel())
            arrays[2 * count + t] = state["variance"].data_ptr()
    dtype = np.float32 if params[0].dtype == torch.float32 else np.float64
    hosts, norms = np.zeros(HOSTS), np.zeros(2 * count)
    return Bound(meta.reshape(-1), arrays, scales, means, hosts, norms, dtype)


def run(
    partition: Partition,
    grads: list[torch.Tensor],
    group: Mapping[str, Any],
    hp: Mapping[str, Any],
    step: float,
) -> bool:
    """One step of ``partition`` in the native passes; ``False`` (nothing changed) where it may not."""
    if hp["eps1_in_square"] or hp["rms_after_decay"]:  # (per step: a group's options may change)
        return False
    bound = partition.adafactor
    if bound is None:
        if not usable(partition):
            partition.adafactor = False
            return False
        function = _function(partition.params[0].dtype)
        if function is None:
            partition.adafactor = False
            return False
        bound = partition.adafactor = (_bind(partition), function)
    elif bound is False:
        return False
    if not all(map(_IS_CONTIGUOUS, grads)):
        return False
    data, function = bound
    count = len(grads)
    data.arrays[count : 2 * count] = partition.grad_ptrs
    eps1, eps2 = hp["eps"]
    if eps1 is None:
        eps1 = torch.finfo(partition.params[0].dtype).eps
    lr = float(hp["lr"])
    weight_decay = hp["weight_decay"]
    # torch's host arithmetic: the lerp weight t^c, rho_t = min(lr, 1/sqrt(t)), the decay
    data.hosts[:] = (
        step ** hp["beta2_decay"], eps1 * eps1, min(lr, 1 / (step**0.5)), eps2, hp["d"],
        1 - lr * weight_decay, float(bool(group.get("maximize", False))), float(weight_decay != 0),
        eps1,
    )  # fmt: skip
    threads = torch.get_num_threads()
    if threads != data.threads:
        data.flag(threads)
    assert data.scratch is not None
    pointers, scratch = data.pointers, data.scratch.ctypes.data
    if not data.scales:
        function(count, WHOLE_STEP, *pointers, threads, scratch)
        return True
    if data.first_pass:
        function(count, 0, *pointers, threads, scratch)
    for row_var, scale in data.scales:
        torch.mean(row_var, dim=-2, keepdim=True, out=scale).clamp_(min=eps1)
    function(count, 1, *pointers, threads, scratch)
    if data.large:
        function(count, 2, *pointers, threads, scratch)
    return True


@dataclass(frozen=True)
class Plan:
    """What ``Optimizer.plans()`` shows for a partition stepped here."""

    source: str


@functools.cache
def plan(dtype: torch.dtype) -> Plan:
    return Plan("# adaptim_adafactor: torch's Adafactor in three native passes\n" + source(dtype))
