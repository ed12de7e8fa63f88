"""Compile a recorded rule into one Triton kernel over every tensor of a GPU partition.

On a GPU the multi-tensor replay launches one ``torch._foreach_*`` kernel per
recorded operation, and each reads and writes whole buffers: a step is
launch-bound on small models and moves several times the bytes of the update
on large ones. This module is the GPU counterpart of :mod:`._native`'s C
loop: for a :class:`~adaptim.torch._trace.Structure` it generates one Triton
kernel (:mod:`._triton_source`), launched *once* per partition per step over
all its tensors, each element of each buffer read once and written once, in
place (a rule with norms or 0-d state per tensor, LARS or LAMB, takes a few
launches: :mod:`._triton_source` explains them). Nothing is copied and nothing is owned: the kernel reads the data
pointers of the parameters, gradients and state where they are, from a device
table of pointers that is uploaded again only when a pointer changed (fresh
gradients after ``zero_grad()`` usually come back at the same addresses from
the caching allocator), without a host synchronisation.

Kernels are cached per structure, dtype and :data:`._triton_source.FUSED_MULTIPLY_ADD`
in memory, and by Triton's own on-disk cache (``~/.triton/cache``) between
processes: the first step of a new rule compiles it (about a second), later
processes load it. The generated source is written to
``$ADAPTIM_CACHE_DIR/kernels/triton_<hash>.py`` (Triton reads a kernel's
source from its file), and ``Optimizer.plans()`` shows it.

:data:`DEVICES` names the device types the engine launches these kernels on
(``cuda``). With ``TRITON_INTERPRET=1`` Triton's interpreter runs the same
kernels on CPU tensors; the tests add ``cpu`` to :data:`DEVICES` to run the
engine's GPU path on this machine's CPU.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from adaptim.torch import _native, _triton_source
from adaptim.torch._native import NativeUnavailable
from adaptim.torch._trace import Structure

if TYPE_CHECKING:
    from adaptim.torch._partition import Partition

#: Device types whose partitions step with a Triton kernel (tests add ``cpu`` under the interpreter).
DEVICES = frozenset({"cuda"})

#: Warps per program: 4 (128 threads) for a block of :data:`._triton_source.BLOCK` elements.
NUM_WARPS = 4

_lock = threading.Lock()
_KERNELS: dict[tuple[Structure, torch.dtype, bool, bool], TritonKernel] = {}
_UNSUPPORTED: dict[tuple[Structure, torch.dtype], str] = {}


def unavailable() -> str | None:
    """Why no Triton kernel can run in this process (triton missing), or ``None``."""
    try:
        importlib.import_module("triton")
    except Exception as error:  # ImportError, or a broken install (a CUDA library missing)
        return f"triton is not importable ({type(error).__name__}: {error})"
    return None


def launchable(device: torch.device) -> bool:
    """Whether a kernel may run now: not while a CUDA graph is captured or Dynamo traces.

    A capture would record the table uploads and the scalar arguments of this
    one step; the replay's ``torch._foreach_*`` kernels are what torch's own
    capturable paths use.
    """
    if torch.compiler.is_compiling():
        return False
    return not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


@dataclass
class TritonKernel:
    """A generated kernel: its source and the ``triton.jit`` functions of a step, in launch
    order, each with its grid (:func:`._triton_source.launch_order`)."""

    source: str
    passes: tuple[tuple[Any, str], ...]
    dtype: torch.dtype
    fused_multiply_add: bool
    #: Norms and per-tensor values: the columns of the partial sums and per-tensor buffers
    #: (0 and 0: an element-wise rule, one function with no buffers).
    norms: int = 0
    per_values: int = 0


def kernel_for(structure: Structure, dtype: torch.dtype) -> TritonKernel:
    """The Triton kernel of ``structure`` for ``dtype``: from memory, or generated now.

    Raises :class:`._native.NativeUnavailable`: structural when the rule or
    dtype has no kernel form (no warning: the replay is the plan), plain
    when triton cannot be imported.
    """
    fma = _triton_source.FUSED_MULTIPLY_ADD
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    key = (structure, dtype, fma, interpret)
    kernel = _KERNELS.get(key)
    if kernel is not None:
        return kernel
    why = _UNSUPPORTED.get((structure, dtype))
    if why is None:
        why = _triton_source.supports(structure, dtype)
        if why is not None:
            _UNSUPPORTED[(structure, dtype)] = why
    if why is not None:
        raise NativeUnavailable(why, structural=True)
    missing = unavailable()
    if missing is not None:
        raise NativeUnavailable(missing)
    with _lock:
        kernel = _KERNELS.get(key)
        if kernel is None:
            source = _triton_source.generate_source(structure, dtype)
            module = _load(source)
            order = _triton_source.launch_order(structure, dtype)
            passes = tuple((getattr(module, name), grid) for name, grid in order)
            norms, per_values = _triton_source.buffer_columns(structure)
            kernel = TritonKernel(source, passes, dtype, fma, norms, per_values)
            _KERNELS[key] = kernel
    return kernel


def _load(source: str) -> Any:
    """Import the generated module from a file (``triton.jit`` reads its functions' source)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:24]
    directory = _native.cache_dir()
    path = directory / f"triton_{digest}.py"
    try:
        if not path.exists():
            directory.mkdir(parents=True, exist_ok=True)
            scratch = directory / f".triton_{digest}.{os.getpid()}.py"
            scratch.write_text(source)
            os.replace(scratch, path)  # atomic: concurrent processes never import half a file
        spec = importlib.util.spec_from_file_location(f"adaptim_triton_{digest}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as error:  # (OSError, or triton refusing the source)
        raise NativeUnavailable(f"could not build a Triton kernel: {error}") from None
    return module


class TritonLaunch:
    """One partition's kernel launch, with the device tables kept between steps.

    The pointer table (``int64``, role by role: parameters, gradients, each
    element-wise state buffer) and the block table live on the device. Per
    step only the gradients' pointers may change: they are compared with the
    last upload as a tuple, and the table is uploaded again (from pinned
    memory, without blocking) only when one moved. The slots are kernel arguments.
    The host copy is a NumPy array whose gradient slice is overwritten in place:
    ``torch.tensor`` of a Python list of every pointer cost 0.37 ms a step on
    1,000 tensors, the slice and ``torch.from_numpy`` 0.04 ms.
    """

    def __init__(self, kernel: TritonKernel, partition: Partition, structure: Structure) -> None:
        self.kernel = kernel
        #: The recording the kernel was generated from (memos keep the same object).
        self.structure = structure
        params = partition.params
        self.device = params[0].device
        self.count = len(params)
        roles = [params, params, *partition.state_lists]
        self._host = np.array([t.data_ptr() for role in roles for t in role], dtype=np.int64)
        self._grads: tuple[int, ...] = ()
        self.table = self._upload(torch.from_numpy(self._host))
        sizes = [p.numel() for p in params]
        block = _triton_source.BLOCK
        rows = [(t, s, min(s + block, n)) for t, n in enumerate(sizes) for s in range(0, n, block)]
        self.blocks = self._upload(torch.tensor(rows, dtype=torch.int64, device="cpu").reshape(-1))
        self.grid = (len(rows),)
        #: Per-tensor values (norms, trust ratios, 0-d state): each tensor's span of rows in
        #: the block table, and device buffers the passes hand on (the blocks' sums of
        #: squares, the tensors' values), allocated once.
        self.buffers: tuple[torch.Tensor, ...] = ()
        if kernel.norms or kernel.per_values:
            spans = [0]
            for n in sizes:
                spans.append(spans[-1] + -(-n // block))
            pairs = [(spans[t], spans[t + 1]) for t in range(self.count)]
            self.buffers = (
                self._upload(torch.tensor(pairs, dtype=torch.int64, device="cpu").reshape(-1)),
                torch.empty(
                    max(1, len(rows) * kernel.norms), dtype=torch.float64, device=self.device
                ),
                torch.empty(
                    max(1, self.count * kernel.per_values), dtype=kernel.dtype, device=self.device
                ),
            )
        self.launched = False
        #: How many times the pointer table went to the device (gradients that moved).
        self.uploads = 0

    def _upload(self, host: torch.Tensor) -> torch.Tensor:
        """A copy of ``host`` on the device, without a host synchronisation."""
        if self.device.type == "cpu":
            return host.clone()  # (``host`` may view ``_host``, rewritten by later steps)
        # pinned memory: the copy is asynchronous, and the allocator keeps the buffer
        # alive until it is done
        return host.pin_memory().to(self.device, non_blocking=True)

    def __call__(self, grad_ptrs: list[int], slots: list[float]) -> None:
        grads = tuple(grad_ptrs)
        if grads != self._grads:
            self._host[self.count : 2 * self.count] = grads
            # (``pin_memory`` copies: the array may change while the upload is in flight)
            self.table = self._upload(torch.from_numpy(self._host))
            self._grads = grads
            self.uploads += 1
        scalars = tuple(map(float, slots))  # (a memo may compute an int)
        device = self.device
        if device.type == "cuda" and device.index != torch.cuda.current_device():
            with torch.cuda.device(device):  # Triton launches on the current device's stream
                self._first_or_launch(scalars)
        else:
            self._first_or_launch(scalars)

    def _first_or_launch(self, scalars: tuple[float, ...]) -> None:
        if self.launched:
            self._launch(scalars)
            return
        # The first launch compiles (or loads Triton's cache): a kernel Triton refuses
        # becomes NativeUnavailable, before anything ran, and the step replays.
        try:
            self._launch(scalars)
        except Exception as error:
            raise NativeUnavailable(
                f"Triton could not compile the kernel ({type(error).__name__}: {error})"
            ) from None
        self.launched = True

    def _launch(self, scalars: tuple[float, ...]) -> None:
        kernel = self.kernel
        grids = {"blocks": self.grid, "tensors": (self.count,)}
        for function, grid in kernel.passes:  # (stream order: each pass sees the last's writes)
            function[grids[grid]](
                self.table,
                self.count,
                self.blocks,
                *self.buffers,
                *scalars,
                BLOCK=_triton_source.BLOCK,
                FMA=kernel.fused_multiply_add,
                num_warps=NUM_WARPS,
                enable_fp_fusion=False,
            )


def kernel_count() -> int:
    """How many Triton kernels this process has generated."""
    return len(_KERNELS)
