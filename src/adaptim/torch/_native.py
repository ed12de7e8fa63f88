"""Compile a recorded rule into one native CPU loop over every tensor of a param group.

torch's fused CPU kernels (Adam, AdamW, Adagrad, SGD) read each buffer once,
but open one parallel region per tensor. This module generates, for a
:class:`~adaptim.torch._trace.Structure`, one C function (:mod:`._native_source`)
that walks *all* the tensors of a group inside a single OpenMP region, each
thread one equal share of their elements: each element is read once
(parameter, gradient, state), the whole update is computed in registers, and
the parameter and state are written back in place. Like ATen's
``parallel_for``, it wakes one thread per :data:`GRAIN` elements at most.
Nothing is copied and nothing is owned: the function receives the data
pointers of the tensors exactly where the user, autograd, DDP's buckets or
ZeRO's bucket views put them.

The C source is compiled once per structure and dtype with the system C
compiler (the same one ``torch.compile`` needs on CPU) into a shared library
cached on disk (``$ADAPTIM_CACHE_DIR``, default ``~/.cache/adaptim``), keyed by
a hash of the source, the flags, the compiler and the CPU, so a second process
loads it in milliseconds. It links against the OpenMP runtime torch itself has
loaded, so the process keeps one thread pool. The arithmetic is the rule's,
in the parameter's dtype, with the multiply-adds that ATen's vectorised
kernels use (``lerp``, ``addcmul`` and ``add(alpha=)`` as fused
multiply-adds, as measured against them), a division by a per-step scalar
element by element as ATen's (its reciprocal times the element differs on
a third of them), and ``number / array`` as torch's ``reciprocal() * number``.
A rule with a square root is written on vectors with MKL's root inlined
(:mod:`._native_vector`, :func:`source_for`), and whole-tensor norms (LARS,
LAMB, NovoGrad) are summed as ``torch.linalg.vector_norm`` sums them
(:mod:`._native_norms`; the large groups' loop sums them per block in double,
across threads, and agrees to rounding), so the results are the reference
path's, and torch.optim's, bit for bit; where :func:`._mkl_sqrt.emulated` fails
the loop takes C's correctly rounded ``sqrt``, which differs from
``torch.sqrt`` on about 17% of float32 values.
float16 and bfloat16 parameters get a loop of their own
(:mod:`._native_half`) that computes as ATen's half kernels do and gives
torch's bits.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adaptim.torch import _native_half, _native_norms
from adaptim.torch._native_source import _COMPARE as _COMPARE
from adaptim.torch._native_source import _CTYPES
from adaptim.torch._native_source import SUPPORTED as SUPPORTED
from adaptim.torch._native_source import _Source as _Source
from adaptim.torch._native_source import generate_source as generate_source
from adaptim.torch._native_source import supports as supports
from adaptim.torch._trace import PER_TENSOR_OPS, Structure

#: Elements per work item: large enough to amortise the loop set-up, small
#: enough that a group of a few large tensors still splits across threads.
BLOCK = 16_384

#: Elements per thread below which waking another thread costs more than it saves
#: (ATen's ``GRAIN_SIZE``: a group of 40k elements runs on one thread, as torch's would).
GRAIN = 32_768

_FLAGS = (
    "-O3",
    "-march=native",
    "-fopenmp",
    "-fPIC",
    "-shared",
    "-fno-math-errno",
    "-ffp-contract=off",
    "-std=c11",
)


class NativeUnavailable(Exception):
    """No native kernel here (no compiler, a structure or dtype it cannot express); say why."""

    def __init__(self, reason: str, *, structural: bool = False) -> None:
        super().__init__(reason)
        #: The rule or dtype, not this machine, rules it out (no warning: the replay is the plan).
        self.structural = structural


#: ``step_kind`` of the kernel: how the step counters it increments are stored.
STEP_KINDS = {None: 0, torch.float32: 1, torch.float64: 2}


@dataclass
class Kernel:
    """A loaded native step and its source."""

    source: str
    function: Callable[..., None]
    buffers: int

    def __call__(
        self,
        pointers: int,
        count: int,
        slots: Sequence[float],
        table: BlockTable,
        step_dtype: torch.dtype | None,
    ) -> None:
        """Step ``count`` tensors whose data pointers the array at address ``pointers`` lists role by role.

        The roles are the structure's inputs (``param``, ``grad``, each state
        buffer), then, when ``step_dtype`` is given, the 0-d ``step`` counters,
        which the kernel increments after the update.
        """
        self.function(
            count,
            pointers,
            (ctypes.c_double * len(slots))(*slots),
            *table.arguments,
            table.threads(torch.get_num_threads()),
            STEP_KINDS[step_dtype],
            table.offsets.ctypes.data,
        )


@dataclass(frozen=True)
class BlockTable:
    """How a kernel splits one list of tensor sizes across threads.

    The blocks (tensor, first element, end element), the work items of the
    norms' passes, and ``offsets``, each tensor's first element in the
    concatenation, then the total, for the balanced element-wise pass.
    """

    blocks: int
    tensor: np.ndarray
    begin: np.ndarray
    end: np.ndarray
    offsets: np.ndarray

    @functools.cached_property
    def numel(self) -> int:
        return int(self.offsets[-1])

    def threads(self, available: int) -> int:
        """Threads worth waking: at most one per :data:`GRAIN` elements, as ATen's ``parallel_for``."""
        return max(1, min(available, self.numel // GRAIN))

    @functools.cached_property
    def arguments(self) -> tuple[int, int, int, int]:
        """The kernel's arguments for this table (the count, then the arrays' addresses)."""
        return (self.blocks, self.tensor.ctypes.data, self.begin.ctypes.data, self.end.ctypes.data)

    @classmethod
    def of(cls, sizes: Sequence[int]) -> BlockTable:
        counts = np.array([max(1, -(-n // BLOCK)) for n in sizes], dtype=np.int64)
        tensor = np.repeat(np.arange(len(sizes), dtype=np.int64), counts)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        local = np.arange(len(tensor), dtype=np.int64) - np.repeat(first, counts)
        begin = local * BLOCK
        end = np.minimum(begin + BLOCK, np.asarray(sizes, dtype=np.int64)[tensor])
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return cls(len(tensor), tensor, begin, end, offsets)


_lock = threading.Lock()
_KERNELS: dict[tuple[Structure, torch.dtype, bool], Kernel] = {}
_FAILED: dict[str, str] = {}


def compiler() -> str | None:
    """The C compiler to use: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH."""
    configured = os.environ.get("CC")
    if configured:
        return shutil.which(configured) or configured
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def cache_dir() -> Path:
    configured = os.environ.get("ADAPTIM_CACHE_DIR")
    base = Path(configured) if configured else Path.home() / ".cache" / "adaptim"
    return base / "kernels"


def _cpu_fingerprint() -> str:
    try:
        flags = next(
            line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        flags = platform.processor()
    return f"{platform.machine()} {flags}"


#: Structures ``supports`` refused, with the reason.
_UNSUPPORTED: dict[Structure, str] = {}


def kernel_for(structure: Structure, dtype: torch.dtype, exact: bool | None = None) -> Kernel:
    """The native kernel of ``structure`` for ``dtype``: from memory, from disk, or compiled now.

    ``exact`` asks for MKL's root inlined (:func:`source_for`); ``None``: :data:`EXACT_ROOT`.
    """
    exact = EXACT_ROOT if exact is None else exact
    key = (structure, dtype, exact)
    kernel = _KERNELS.get(key)
    if kernel is not None:
        return kernel
    half = dtype in _native_half.HELPERS and structure.half
    if dtype not in _CTYPES and not half:
        raise NativeUnavailable(f"no native kernel for {dtype}", structural=True)
    why = _UNSUPPORTED.get(structure)  # (asked on every step of such a group: remember)
    if why is None:
        why = _native_half.supports(structure) if half else supports(structure)
        if why is not None:
            _UNSUPPORTED[structure] = why
    if why is not None:
        raise NativeUnavailable(why, structural=True)
    with _lock:
        kernel = _KERNELS.get(key)
        if kernel is None:
            if half:
                source = _native_half.generate_source(structure, dtype)
            else:
                source = source_for(structure, dtype, exact)
            kernel = Kernel(source, _load(source), len(structure.inputs))
            _KERNELS[key] = kernel
    return kernel


#: Whether a rule with a square root runs :mod:`._native_vector`'s loop, which computes
#: ``torch.sqrt``'s bits (MKL's algorithm inlined) and so equals torch.optim's for-loop bit
#: for bit. Off by default: MKL's correction is twelve multiplies and adds on the pipes the
#: loop fills, where the CPU's correctly rounded ``vsqrtps`` runs on the divider beside
#: them, and on the 16M / 100-tensor workload with one thread (idle, side by side) it took
#: Adagrad from 1.03-1.04x torch's fused kernel to 0.86-0.89x, Adam from 1.09-1.16x to
#: 0.92-0.96x. Off, the loop agrees with torch.optim to rounding (``sqrt`` differs from
#: ``torch.sqrt`` on about 17% of float32 values by an ulp). Set it before the process
#: compiles its first kernel; ``foreach=True`` (the multi-tensor replay) is bit-identical
#: on any machine. On an Intel Xeon (Emerald Rapids), where MKL runs its AVX-512 kernel
#: (``vrsqrt14`` and FMAs, also emulated), the root alone is cheaper than ``vsqrtps``, and
#: loops in cache ran 0.90-1.00x the time with it, but 16M / 100 tensors with one thread
#: 1.02-1.07x (``benchmarks/mkl_sqrt_speed.py``, idle), Adagrad then 0.97x torch's fused
#: kernel against 1.04x without (``step_speed.py --exact-root on/off``): off there too, but
#: the default takes the exact loop on groups where it is free there (below 512k elements:
#: :data:`._mkl_sqrt.EXACT_LOOP_FREE_BELOW`, ``benchmarks/exact_root_speed.py``).
#: On a CPU where MKL runs another kernel than the ones emulated
#: (:func:`._mkl_sqrt.emulated` false, checked once per process) it changes nothing: the
#: loop keeps the correctly rounded root.
EXACT_ROOT = False


def source_for(structure: Structure, dtype: torch.dtype, exact: bool | None = None) -> str:
    """The C of ``structure``'s kernel: the scalar loop, or with the exact root vectors.

    With ``exact`` (``None``: :data:`EXACT_ROOT`) a rule with a square root gets
    :mod:`._native_vector`'s loop when :func:`._mkl_sqrt.emulated` holds (the root
    inlined, ``torch.sqrt``'s bits); otherwise the scalar loop of :mod:`._native_source`
    (its ``sqrt`` is the correctly rounded one, which differs from MKL's on about 17% of
    values). With ``exact``, whole-tensor norms are summed in ATen's order where
    :func:`._native_norms.holds`; otherwise per block in double, a tensor's blocks on
    several threads (on the 235k MLP, one thread, ATen's order took LAMB's step 1.05-1.07x
    the time, LARS's and NovoGrad's 0.96-0.98x, and two threads leave a large tensor's
    norm to one: ``benchmarks/norm_order_speed.py``).
    """
    from adaptim.torch import _mkl_sqrt, _native_vector  # (they build on this module)

    exact = EXACT_ROOT if exact is None else exact
    aten_norms = exact and normed(structure) and _native_norms.holds(dtype)
    if exact and _rooted(structure) and _mkl_sqrt.emulated(dtype):
        return _native_vector.generate_source(structure, dtype, aten_norms)
    return generate_source(structure, dtype, aten_norms)


def _rooted(structure: Structure) -> bool:
    return any(op == "sqrt" for op, _ in structure.ops)


def normed(structure: Structure) -> bool:
    """Whether the rule takes whole-tensor norms (LARS, LAMB, NovoGrad)."""
    return any(op == "norm" for op, _ in structure.ops)


def gives_torchs_bits(structure: Structure, dtype: torch.dtype) -> bool:
    """Whether the exact loop of ``structure`` (``kernel_for(..., exact=True)``) computes
    torch.optim's float32/float64 bits here: a rule with no square root, or one whose root
    :func:`._mkl_sqrt.emulated` reproduces, and no whole-tensor norm (LARS, LAMB,
    NovoGrad), or one whose order :func:`._native_norms.holds` (the loop sums each tensor
    as ``torch.linalg.vector_norm`` does); both checked once per process. No other
    per-tensor reduction (sums, dot products: the loop has none).

    The rule's other operations are ATen's arithmetic already (multiply-adds where
    ATen's kernels fuse them; ``tests/test_native_threads.py`` holds every torch twin's
    exact loop to torch.optim's bits, the equality tests every other rule to its replay's).
    """
    from adaptim.torch import _mkl_sqrt  # (it builds on this module)

    if dtype not in (torch.float32, torch.float64):
        return False
    needs = _BITS_NEEDS.get(structure)  # (asked every step of a small group: remember)
    if needs is None:
        ops = {op for op, _ in structure.ops}
        if structure.half or ops & (PER_TENSOR_OPS - {"norm"}):
            needs = ("never",)
        else:
            needs = ("root",) * _rooted(structure) + ("norms",) * normed(structure)
        _BITS_NEEDS[structure] = needs
    if "never" in needs:
        return False
    return ("root" not in needs or _mkl_sqrt.emulated(dtype)) and (
        "norms" not in needs or _native_norms.holds(dtype)
    )


#: :func:`gives_torchs_bits`'s question per structure: which of this machine's and wheel's
#: checks it needs ("root": MKL's root emulated, "norms": ATen's norm order), or "never"
#: (half types, reductions the loop cannot take).
_BITS_NEEDS: dict[Structure, tuple[str, ...]] = {}


def build_library(source: str, name: str = "step") -> Path:
    """The shared library of the C ``source``: from the disk cache, or compiled into it now.

    Keyed by the source, the flags, the compiler and the CPU, and written
    atomically, so concurrent processes share it and never load half a file.
    Raises :class:`NativeUnavailable` (remembered per source) when there is no
    compiler or it refuses the source.
    """
    cc = compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler found (set CC, or install gcc)")
    identity = "\n".join([source, " ".join(_FLAGS), cc, _cpu_fingerprint()])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
    if digest in _FAILED:
        raise NativeUnavailable(_FAILED[digest])
    directory = cache_dir()
    library = directory / f"{name}_{digest}.so"
    if not library.exists():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=directory) as scratch:
                c_file = Path(scratch) / f"{name}.c"
                c_file.write_text(source)
                built = Path(scratch) / f"{name}.so"
                done = subprocess.run(
                    [cc, *_FLAGS, str(c_file), "-o", str(built), "-lm"],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                if done.returncode != 0:
                    raise NativeUnavailable(
                        f"the C compiler failed ({cc}): {done.stderr.strip()[:300]}"
                    )
                os.replace(built, library)  # atomic: concurrent processes never load half a file
        except (OSError, subprocess.SubprocessError) as error:
            _FAILED[digest] = f"could not build a native kernel: {error}"
            raise NativeUnavailable(_FAILED[digest]) from None
        except NativeUnavailable as error:
            _FAILED[digest] = str(error)
            raise
    return library


def _load(source: str) -> Callable[..., None]:
    library = build_library(source)
    function = ctypes.CDLL(str(library)).adaptim_step
    function.restype = None
    function.argtypes = [
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    return function


_COUNT_SOURCE = """#include <stdint.h>
void adaptim_count(int64_t n, const int64_t* steps, int kind) {
  if (kind == 1) for (int64_t t = 0; t < n; ++t) *(float*)steps[t] += 1.0f;
  if (kind == 2) for (int64_t t = 0; t < n; ++t) *(double*)steps[t] += 1.0;
}
"""


@functools.cache
def _counter() -> Callable[..., None] | None:
    try:
        function = ctypes.CDLL(str(build_library(_COUNT_SOURCE, "count"))).adaptim_count
    except NativeUnavailable:
        return None
    function.restype = None
    function.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
    return function


class StepCounter:
    """``torch._foreach_add_(steps, 1.0)`` for 0-d CPU counters of one float dtype, in one C call.

    torch.optim's non-capturable steps keep one 0-d CPU tensor per parameter;
    ``_foreach_add_`` on them is one dispatch per tensor (about 3 µs each: 3 ms
    a step for 1,000 parameters, more than a GPU kernel of the whole update).
    The same ``+= 1`` in the counters' dtype, so the same bits. ``None`` from
    :meth:`of` where there is no C compiler (the caller keeps ``_foreach_add_``).
    """

    def __init__(self, function: Callable[..., None], steps: list[torch.Tensor], kind: int) -> None:
        self._function = function
        self._steps = steps  # (kept alive: the array holds their addresses)
        self._pointers = np.array([t.data_ptr() for t in steps], dtype=np.int64)
        self._kind = kind

    @classmethod
    def of(cls, steps: list[torch.Tensor], dtype: torch.dtype | None) -> StepCounter | None:
        function = _counter() if dtype is not None else None
        if function is None:
            return None
        return cls(function, steps, STEP_KINDS[dtype])

    def __call__(self) -> None:
        self._function(len(self._steps), self._pointers.ctypes.data, self._kind)


def kernel_count() -> int:
    """How many native kernels this process has loaded (tests check schedulers add none)."""
    return len(_KERNELS)
